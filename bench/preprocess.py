"""Preprocessing throughput per process: our Lab + label shards vs plain PIL decode+resize.

Ours   = pipeline.preprocess.build_lab_shard (robust decode, resize, Lab as int16 fixed
         point, HDF5 shard, Lab compression as luigi.cfg's default: none)
         + build_label_shard (low-pass, GMM posteriors, float16 lzf HDF5 shard), K=16,
         im_size 256, low-pass 8, with a GMM fitted once (before timing) on the same shards.
Plain  = for each file: Image.open, convert("RGB"), resize((256, 256)), np.asarray.

Both run on the same generated ImageNet-like JPEGs (~500x375) in one process, one thread.
The images are cut into chunks (one shard each); every round times ours and plain on
each chunk back to back, alternating which goes first, so machine noise hits both.
value = median over rounds of (ours images/s) / (plain images/s); goal >= 0.7.

--what-if lzf|szip|gzip also times, in the same rounds, ours with the Lab shards written
with that compression ([colorize] lab_compression), and reports its ratio and size.

    .venv/bin/python bench/preprocess.py [--n 200] [--rounds 5] [--chunk 100] [--what-if szip]
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.color import lab_planes  # noqa: E402
from pipeline.splits import list_split
from pipeline.synthetic import generate_imagenet_like  # noqa: E402
from pipeline.images import load_rgb_with_size  # noqa: E402
from pipeline.shards import LAB_SCALE, read_array, write_shard  # noqa: E402
from pipeline.gmm import fit_gmm  # noqa: E402
from pipeline.preprocess import build_label_shard, build_lab_shard, gmm_features  # noqa: E402


def plain(root, relpaths, size):
    for rp in relpaths:
        with Image.open(root / rp) as im:
            np.asarray(im.convert("RGB").resize((size, size)))


def ours(root, relpaths, size, gmm, lowpass, out_dir, tag, compression=None):
    lab = out_dir / f"lab-{tag}.h5"
    lbl = out_dir / f"labels-{tag}.h5"
    for p in (lab, lbl):            # a real run writes new files: replacing one costs more
        p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    build_lab_shard(root, relpaths, size, lab, sig=f"bench{tag}", compression=compression)
    t1 = time.perf_counter()
    build_label_shard(lab, gmm, lowpass, lbl, sig=f"bench{tag}")
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def stage_breakdown(root, relpaths, size, out, reps=3):
    """ms/image of the pieces of the Lab stage on one chunk (medians of `reps` interleaved
    passes): where ours spends its time beyond plain."""
    n = len(relpaths)
    rgbs = [load_rgb_with_size(root / rp, size)[0] for rp in relpaths]
    L = np.empty((n, size, size), np.int16)
    ab = np.empty((n, 2, size, size), np.int16)

    def convert():
        for i, x in enumerate(rgbs):
            lab_planes(x, L[i], ab[i], scale=LAB_SCALE)
    convert()

    def write(compression):
        def go():
            p = out / f"bd-{compression}.h5"
            p.unlink(missing_ok=True)
            write_shard(p, {"L": L, "ab": ab}, {"kind": "lab", "signature": "bd"}, compression=compression)
        return go

    parts = {"plain_decode_resize": lambda: plain(root, relpaths, size),
             "load_rgb_with_size": lambda: [load_rgb_with_size(root / rp, size) for rp in relpaths],
             "lab_planes_int16": convert,
             "write_lab_none": write(None), "write_lab_lzf": write("lzf"), "write_lab_szip": write("szip"),
             "read_ab_none": lambda: read_array(out / "bd-None.h5", "ab"),
             "read_ab_szip": lambda: read_array(out / "bd-szip.h5", "ab")}
    times = {k: [] for k in parts}
    for r in range(reps):
        for k in (list(parts) if r % 2 == 0 else list(parts)[::-1]):
            t = time.perf_counter()
            parts[k]()
            times[k].append(time.perf_counter() - t)
    return {k: round(statistics.median(v) / n * 1e3, 3) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="images (default 200)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=100, help="images per shard (default 100)")
    ap.add_argument("--im-size", type=int, default=256)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--lowpass", type=int, default=8)
    ap.add_argument("--what-if", choices=["lzf", "szip", "gzip"],
                    help="also time ours with this Lab shard compression")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-preprocess-"))
    try:
        t0 = time.perf_counter()
        data = tmp / "data"
        generate_imagenet_like(data, args.n, seed=0, val_fraction=0.0)
        relpaths = list_split(data, "train")
        gen_s = time.perf_counter() - t0
        for rp in relpaths:                         # warm the page cache for both sides
            (data / rp).read_bytes()
        chunks = [relpaths[i:i + args.chunk] for i in range(0, len(relpaths), args.chunk)]
        out = tmp / "out"
        out.mkdir()

        # GMM fitted on the Lab shards (once, untimed in the rates; reported separately)
        t0 = time.perf_counter()
        lab_paths = []
        for c, files in enumerate(chunks):
            p = out / f"fit-{c}.h5"
            build_lab_shard(data, files, args.im_size, p, sig=f"fit{c}")
            lab_paths.append(p)
        feats = gmm_features(lab_paths, 5000, 20, 1000, 0)
        gmm = fit_gmm(feats, args.k, 0)
        fit_s = time.perf_counter() - t0

        # warm-up of both paths (imports, lookup tables, allocator)
        plain(data, chunks[0][:10], args.im_size)
        ours(data, chunks[0][:10], args.im_size, gmm, args.lowpass, out, "warm")

        rounds = []
        for r in range(args.rounds):
            t_ours = t_lab = t_lbl = t_plain = t_wi = 0.0
            for c, files in enumerate(chunks):
                sides = ("ours", "plain") + (("what_if",) if args.what_if else ())
                for side in (sides if (r + c) % 2 == 0 else sides[::-1]):
                    if side == "what_if":
                        a, b = ours(data, files, args.im_size, gmm, args.lowpass, out, f"w{c}", args.what_if)
                        t_wi += a + b
                    elif side == "ours":
                        a, b = ours(data, files, args.im_size, gmm, args.lowpass, out, f"{c}")
                        t_lab += a
                        t_lbl += b
                        t_ours += a + b
                    else:
                        s = time.perf_counter()
                        plain(data, files, args.im_size)
                        t_plain += time.perf_counter() - s
            n = len(relpaths)
            rounds.append({"ours": n / t_ours, "plain": n / t_plain, "ratio": t_plain / t_ours,
                           "lab": n / t_lab, "labels": n / t_lbl})
            if args.what_if:
                rounds[-1]["what_if_ratio"] = t_plain / t_wi
            print(f"round {r}: ours {n / t_ours:.1f} img/s (lab {n / t_lab:.1f}, labels "
                  f"{n / t_lbl:.1f}), plain {n / t_plain:.1f} img/s, ratio {t_plain / t_ours:.3f}",
                  file=sys.stderr)
        lab_bytes = os.path.getsize(out / "lab-0.h5")
        breakdown = stage_breakdown(data, chunks[0], args.im_size, out)
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        result = {"bench": "preprocess", "value": round(med["ratio"], 3), "unit": "ratio ours/plain images/s",
                  "goal": 0.7, "goal_op": ">=", "ours_images_per_s": round(med["ours"], 1),
                  "plain_images_per_s": round(med["plain"], 1),
                  "lab_stage_images_per_s": round(med["lab"], 1),
                  "label_stage_images_per_s": round(med["labels"], 1),
                  "ratios": [round(r["ratio"], 3) for r in rounds],
                  "n_images": len(relpaths), "chunk": args.chunk, "rounds": args.rounds,
                  "im_size": args.im_size, "k": args.k, "lowpass": args.lowpass,
                  "gmm_fit_s_untimed": round(fit_s, 2), "generate_s": round(gen_s, 2),
                  "lab_shard_bytes_per_image": round(lab_bytes / len(chunks[0])),
                  "breakdown_ms_per_image": breakdown}
        if args.what_if:
            result[f"what_if_{args.what_if}_ratio"] = round(med["what_if_ratio"], 3)
            result[f"what_if_{args.what_if}_lab_bytes_per_image"] = round(os.path.getsize(out / "lab-w0.h5") / len(chunks[0]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
