"""Loader throughput over many shard files vs one: does the shard-local epoch order hold up?

  many    ShardDataset over --shards (Lab shard, label shard) pairs, read in the order of
          EpochSampler(shards=ds.shard_ids) -- make_loader's shuffled order -- one process,
          no loader workers, 1 torch thread.
  one     the same images in ONE pair of files, same sampler.
  before  the many-shard dataset in a uniform random permutation (EpochSampler without
          shard ids: the order before the shard-local one).

Each side starts an epoch with no file open (ds.close()), reads a warm-up of SHARD_WINDOW x
(images per shard) samples untimed -- enough to open the shards live at any point of the
epoch -- and times the next --samples (--before-samples) samples: the steady rate of an epoch
(a whole epoch would take minutes here; over 1,000 shards it opens ~3 % more files than the
steady rate implies: the window at its start, and the shards whose window wraps around its
end).  `before` opens a file for almost every read all through the epoch.  Rounds alternate
which side goes first; each round is a new epoch; medians.  At 64 px and at 256 px:
value = min over the two sizes of median(many samples/s) / median(one samples/s); goal >= 0.8.

Shards are written by pipeline.shards.write_shard as the preprocessing stages write them
(Lab: uint8 L, uncompressed, as LabShard version 5 writes it; labels: float16 posteriors,
lzf), from a pool of random images.  Lab shards leave out ab, which the loader never reads,
to keep the files small (4 KB per image at 64 px, 64 KB at 256 px; int16 L, before, took
twice that).

Opening a shard (two files: open, dataset lookup, first read, close) costs ~0.5 ms in a tight
loop and ~1.3 ms inside the read loop here (HDF5 sets up a metadata cache per open file, and
the reads in between evict it from the CPU caches); train/data.py opens through h5py's low-level
API, ~2.3x cheaper than h5py.File, its dataset lookup and first slice.  So `many` loses ~1.3 ms
/ (images per shard) per sample: the ratio depends on images per shard.  Preprocessing's shard_size is 256 (mean ~252); the defaults
(64 at 64 px, 16 at 256 px) are what fits ~2 minutes and ~9 GB of memory here (writing the
one-file twin at 256 px holds it in memory ~3 times).

--baseline DIR also times another checkout's train/data.py (e.g. `git worktree add /tmp/base
HEAD~1`) on the same files in the same rounds: sides "many_baseline" and "one_baseline", and
its ratio and samples/s in the JSON -- a before/after of a loader change in one run.

    .venv/bin/python bench/many_shards.py [--shards 1000] [--sizes 64 256] [--per-shard 64 16]
        [--samples 16000 4000] [--before-samples 1500] [--rounds 3] [--baseline DIR]
"""
import argparse
import importlib.util
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.shards import encode_lab, write_shard  # noqa: E402
from train.data import SHARD_WINDOW, EpochSampler, ShardDataset  # noqa: E402

POOL = 16  # distinct random images the shards are filled from


def image_pool(im_size, k, lowpass, rng):
    """POOL random images: uint8 L (P, S, S), as in Lab shards; float16 posteriors (P, K, s, s)."""
    s = im_size // lowpass
    L, _ = encode_lab(rng.uniform(0, 100, (POOL, im_size, im_size)))
    post = rng.dirichlet(np.full(k, 0.3), (POOL, s, s)).transpose(0, 3, 1, 2).astype(np.float16)
    return L, post


def write_pair(folder, name, pool, first, n):
    """Lab + label shard of images first .. first + n - 1 (cycling through the pool)."""
    L, post = pool
    take = np.arange(first, first + n) % POOL
    paths = [f"img{i}.jpg" for i in range(first, first + n)]
    lab, labels = folder / f"lab-{name}.h5", folder / f"labels-{name}.h5"
    write_shard(lab, {"L": L[take], "paths": paths}, {"kind": "lab"}, compression=None)
    write_shard(labels, {"posteriors": post[take], "paths": paths}, {"kind": "labels"})
    return str(lab), str(labels)


def read_rate(ds, sampler, epoch, warm, limit):
    """Samples/s reading ds in sampler's order: `limit` samples of `epoch` after `warm` untimed."""
    ds.close()
    sampler.set_epoch(epoch)
    items = list(sampler)
    for item in items[:warm]:
        ds[item]
    items = items[warm:warm + limit]
    t0 = time.perf_counter()
    for item in items:
        ds[item]
    return len(items) / (time.perf_counter() - t0)


def load_data_module(checkout):
    """train/data.py of another checkout, as a module of its own (for --baseline)."""
    spec = importlib.util.spec_from_file_location("baseline_data", Path(checkout) / "train" / "data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_size(tmp, im_size, per_shard, samples, args, rng):
    folder = tmp / f"s{im_size}"
    folder.mkdir()
    pool = image_pool(im_size, args.k, args.lowpass, rng)
    t0 = time.perf_counter()
    many_pairs = [write_pair(folder, f"{i}", pool, i * per_shard, per_shard) for i in range(args.shards)]
    one_pairs = [write_pair(folder, "one", pool, 0, args.shards * per_shard)]
    print(f"{im_size} px: wrote {args.shards} shards of {per_shard} images + one of "
          f"{args.shards * per_shard} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    many, one = ShardDataset(many_pairs, flip=True), ShardDataset(one_pairs, flip=True)
    n = len(many)
    sides = {"many": (many, EpochSampler(n, True, 0, shards=many.shard_ids), samples),
             "one": (one, EpochSampler(n, True, 0, shards=one.shard_ids), samples),
             "before": (many, EpochSampler(n, True, 0), args.before_samples)}
    if args.baseline:
        base = load_data_module(args.baseline)
        for name, pairs in (("many_baseline", many_pairs), ("one_baseline", one_pairs)):
            ds = base.ShardDataset(pairs, flip=True)
            sides[name] = (ds, base.EpochSampler(n, True, 0, shards=ds.shard_ids), samples)
    rates = {name: [] for name in sides}
    names = list(sides)
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            ds, sampler, limit = sides[name]
            rates[name].append(read_rate(ds, sampler, r, SHARD_WINDOW * per_shard, limit))
        print(f"{im_size} px round {r}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in rates.items()),
              file=sys.stderr)
    for ds, _, _ in sides.values():
        ds.close()
    shutil.rmtree(folder, ignore_errors=True)
    med = {name: statistics.median(v) for name, v in rates.items()}
    baseline = {} if not args.baseline else {
        "baseline_ratio": round(med["many_baseline"] / med["one_baseline"], 3),
        "baseline_many_samples_per_s": round(med["many_baseline"]),
        "baseline_one_samples_per_s": round(med["one_baseline"])}
    return {**baseline, "ratio": round(med["many"] / med["one"], 3), "ratio_before": round(med["before"] / med["one"], 3),
            "many_samples_per_s": round(med["many"]), "one_samples_per_s": round(med["one"]),
            "before_samples_per_s": round(med["before"]), "images_per_shard": per_shard, "n_images": n,
            "samples_timed": min(samples, n - SHARD_WINDOW * per_shard),
            "paired_ratios": [round(a / b, 3) for a, b in zip(rates["many"], rates["one"])]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", type=int, default=1000, help="shard pairs on the many side")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="image sizes (px)")
    ap.add_argument("--per-shard", type=int, nargs="+", default=[64, 16],
                    help="images per shard, one per size")
    ap.add_argument("--samples", type=int, nargs="+", default=[16000, 4000],
                    help="samples timed per round on the many and one sides, one per size")
    ap.add_argument("--before-samples", type=int, default=1500, help="samples timed in the old order")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--lowpass", type=int, default=8)
    ap.add_argument("--baseline", metavar="DIR", help="another checkout whose train/data.py is timed too")
    args = ap.parse_args()
    if args.baseline and not (Path(args.baseline) / "train" / "data.py").is_file():
        ap.error(f"--baseline {args.baseline}: no train/data.py there")
    if not len(args.sizes) == len(args.per_shard) == len(args.samples):
        ap.error("--sizes, --per-shard and --samples need one value per size")
    t_start = time.perf_counter()
    torch.set_num_threads(1)                              # as in a DataLoader worker
    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-many-shards-"))
    try:
        sizes = {im_size: bench_size(tmp, im_size, per_shard, samples, args, rng)
                 for im_size, per_shard, samples in zip(args.sizes, args.per_shard, args.samples)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"bench": "many_shards", "value": min(s["ratio"] for s in sizes.values()),
              "unit": "ratio samples/s many shards / one shard (min over sizes)", "goal": 0.8,
              "goal_op": ">=", "value_before": min(s["ratio_before"] for s in sizes.values()),
              **{f"px{k}": v for k, v in sizes.items()}, "shards": args.shards,
              "shard_window": SHARD_WINDOW, "rounds": args.rounds,
              "max_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 1),
              "seconds": round(time.perf_counter() - t_start, 1)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
