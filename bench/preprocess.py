"""Preprocessing throughput per process: our Lab + label shards vs plain PIL decode+resize.

Ours   = pipeline.preprocess.build_lab_shard (robust decode, resize, Lab, HDF5 shard)
         + build_label_shard (low-pass, GMM posteriors, HDF5 shard), K=16, im_size 256,
         low-pass 8, with a GMM fitted once (before timing) on the same shards.
Plain  = for each file: Image.open, convert("RGB"), resize((256, 256)), np.asarray.

Both run on the same generated ImageNet-like JPEGs (~500x375) in one process.  The
images are cut into chunks (one shard each); every round times ours and plain on
each chunk back to back, alternating which goes first, so machine noise hits both.
value = median over rounds of (ours images/s) / (plain images/s); goal >= 0.7.

--what-if also times, in the same rounds, ours with the Lab shards written uncompressed
(pipeline.preprocess.write_shard monkeypatched in this process only) -- the main change
proposed in bench/README.md.

    .venv/bin/python bench/preprocess.py [--n 200] [--rounds 5] [--chunk 100] [--what-if]
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

from pipeline.color import rgb_to_lab  # noqa: E402
from pipeline.datasets import generate_imagenet_like, list_split  # noqa: E402
from pipeline.images import load_rgb_with_size  # noqa: E402
from pipeline.shards import read_array, write_shard  # noqa: E402
from pipeline.gmm import fit_gmm  # noqa: E402
from pipeline.preprocess import build_label_shard, build_lab_shard, gmm_features  # noqa: E402


def plain(root, relpaths, size):
    for rp in relpaths:
        with Image.open(root / rp) as im:
            np.asarray(im.convert("RGB").resize((size, size)))


# NB: sig must be non-empty: pipeline.shards.read_attrs json-decodes an empty string
# attribute ("" in "[{" is True), so the default sig="" makes read_attrs fail.
def ours(root, relpaths, size, gmm, lowpass, out_dir, tag, uncompressed_lab=False):
    lab = out_dir / f"lab-{tag}.h5"
    lbl = out_dir / f"labels-{tag}.h5"
    t0 = time.perf_counter()
    if uncompressed_lab:
        # WHAT-IF (monkeypatch, bench only): Lab shards written without lzf/shuffle
        # (fletcher32 kept), the change proposed for pipeline/preprocess.build_lab_shard
        import pipeline.preprocess as pp
        orig = pp.write_shard
        pp.write_shard = lambda path, arrays, attrs: orig(path, arrays, attrs, compression=None)
        try:
            build_lab_shard(root, relpaths, size, lab, sig=f"bench{tag}")
        finally:
            pp.write_shard = orig
    else:
        build_lab_shard(root, relpaths, size, lab, sig=f"bench{tag}")
    t1 = time.perf_counter()
    build_label_shard(lab, gmm, lowpass, lbl, sig=f"bench{tag}")
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def stage_breakdown(root, relpaths, size, out, reps=3):
    """ms/image of the pieces of the Lab stage and of reading a Lab shard back (medians of
    `reps` interleaved passes over one chunk): where ours spends its time beyond plain."""
    n = len(relpaths)
    rgbs = [load_rgb_with_size(root / rp, size)[0] for rp in relpaths]
    labs = [rgb_to_lab(x) for x in rgbs]
    L = np.stack([x[..., 0] for x in labs]).astype(np.float16)
    ab = np.stack([np.moveaxis(x[..., 1:], -1, 0) for x in labs]).astype(np.float16)
    L16, ab16 = np.empty_like(L[0]), np.empty_like(ab[0])

    def fill():
        for x in labs:
            L16[...] = x[..., 0]
            ab16[...] = np.moveaxis(x[..., 1:], -1, 0)

    def write(compression):
        def go():
            write_shard(out / f"bd-{compression}.h5", {"L": L, "ab": ab}, {"kind": "lab", "signature": "bd"},
                        compression=compression)
        return go

    def read(compression):
        return lambda: read_array(out / f"bd-{compression}.h5", "ab")

    parts = {"plain_decode_resize": lambda: plain(root, relpaths, size),
             "load_rgb_with_size": lambda: [load_rgb_with_size(root / rp, size) for rp in relpaths],
             "rgb_to_lab": lambda: [rgb_to_lab(x) for x in rgbs],
             "float16_fill": fill,
             "write_lab_lzf": write("lzf"), "write_lab_uncompressed": write(None),
             "read_ab_lzf": read("lzf"), "read_ab_uncompressed": read(None)}
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
    ap.add_argument("--what-if", action="store_true",
                    help="also time ours with uncompressed Lab shards (monkeypatched write_shard)")
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
                        a, b = ours(data, files, args.im_size, gmm, args.lowpass, out, f"w{c}", True)
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
            result["what_if_uncompressed_lab_ratio"] = round(med["what_if_ratio"], 3)
            result["what_if_lab_bytes_per_image"] = round(os.path.getsize(out / "lab-w0.h5") / len(chunks[0]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
