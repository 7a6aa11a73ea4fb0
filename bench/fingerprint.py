"""Planning cost of the two fingerprint modes: pipeline.plan.plan_shards on --n small files.

Writes --n files of random bytes (sizes uniform in [--kb/2, 3*--kb/2] KiB, 100 per folder;
fingerprints do not decode, so the format does not matter), waits out the digest cache's
racy window (pipeline.fingerprint.RACY_NS) so digests may be cached, then times, interleaved
with alternating order (--reps rounds, shard_size 256):

  stat           plan_shards(..., fingerprint="stat"): one os.stat per file
  content_warm   fingerprint="content" with a complete digest cache: os.stat per file plus
                 loading the cache, no file read (the no-op rerun case)
  content_cold   fingerprint="content" with the cache file deleted first: reads and hashes
                 every file (from the page cache after the first round) and writes the cache

Every round checks that warm and cold give the same plan.  value = median(content_warm) /
median(stat); goal <= 1.5.

    .venv/bin/python bench/fingerprint.py [--n 10000] [--reps 7] [--kb 8]
"""
import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline import fingerprint  # noqa: E402
from pipeline.plan import plan_shards  # noqa: E402


def make_files(root: Path, n: int, kb: int, seed: int = 0) -> list:
    import numpy as np
    rng = np.random.default_rng(seed)
    relpaths = [f"c{i // 100:04d}/f{i:06d}.bin" for i in range(n)]
    for rp, size in zip(relpaths, rng.integers(kb * 512, kb * 1536, size=n)):
        p = root / rp
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.bytes(int(size)))
    return relpaths


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--kb", type=int, default=8, help="mean file size, KiB")
    args = ap.parse_args()
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-fingerprint-"))
    try:
        root, cache = tmp / "data", tmp / "cache"
        relpaths = make_files(root, args.n, args.kb)
        time.sleep(fingerprint.RACY_NS / 1e9 + 0.1)
        cache_file = fingerprint.cache_path(cache, root)

        def plan(mode):
            return plan_shards(root, relpaths, 256, 256, fingerprint=mode, cache_dir=cache)

        def cold():
            cache_file.unlink(missing_ok=True)
            return plan("content")

        sides = {"stat": lambda: plan("stat"), "content_warm": lambda: plan("content"), "content_cold": cold}
        cold()                                                  # warms the digest cache
        times = {k: [] for k in sides}
        plans = {}
        for r in range(args.reps):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]
            for name in order:
                t0 = time.perf_counter()
                plans[name] = sides[name]()
                times[name].append(time.perf_counter() - t0)
            if plans["content_warm"] != plans["content_cold"]:
                raise RuntimeError("warm and cold content plans differ")
            print(f"round {r}: " + ", ".join(f"{k} {v[-1] * 1e3:.1f} ms" for k, v in times.items()), file=sys.stderr)
        med = {k: statistics.median(v) for k, v in times.items()}
        result = {"bench": "fingerprint", "value": round(med["content_warm"] / med["stat"], 3),
                  "unit": "x (content mode, warm cache / stat mode planning time)", "goal": 1.5, "goal_op": "<=",
                  **{f"{k}_ms": round(v * 1e3, 1) for k, v in med.items()},
                  **{f"{k}_us_per_file": round(v * 1e6 / args.n, 2) for k, v in med.items()},
                  "cold_over_stat": round(med["content_cold"] / med["stat"], 2),
                  "cache_bytes": cache_file.stat().st_size, "n_files": args.n, "mean_kib": args.kb,
                  "n_shards": len(plans["stat"]), "reps": args.reps,
                  "seconds": round(time.perf_counter() - t_start, 1)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
