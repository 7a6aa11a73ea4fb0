"""Loader throughput: train.data.ShardDataset vs the original's on-the-fly sample path.

  ours      ShardDataset(pairs, flip=True)[i] for shuffled indices i, one process
            (reads L and the stored posteriors from the HDF5 shards).
  original  per sample, as the research code did (written here): decode the JPEG (PIL),
            resize the shorter side to 256 + centre crop, skimage.color.rgb2lab, Gaussian
            blur of a and b with sigma = low-pass factor at full size, hue/chroma features,
            sklearn GaussianMixture.predict_proba for every pixel at full size (256x256),
            and the L - mean_L input tensor.

ours runs with 1 torch thread, as in a DataLoader worker (torch sets 1 there); it is also
timed with torch's default threads (as with loader_workers=0), reported as an extra: on
this shared 2-core machine the per-sample torch ops (L - mean_L, flip) then pay OpenMP
parallel-region stalls.  The original path runs with the default thread settings.

Same images (the shards are built from the same generated JPEGs, K=16, im_size 256,
low-pass 8), same process.  Each round times ours over every image and the original over
a slice of --orig-per-round images (it is ~100x slower), alternating which goes first.
value = median(ours samples/s) / median(original samples/s); goal >= 100.

    .venv/bin/python bench/loader.py [--n 64] [--rounds 9] [--orig-per-round 4]
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.splits import list_split
from pipeline.synthetic import generate_imagenet_like  # noqa: E402
from pipeline.gmm import fit_gmm, to_sklearn  # noqa: E402
from pipeline.preprocess import build_label_shard, build_lab_shard, gmm_features, mean_lightness  # noqa: E402
from train.data import ShardDataset  # noqa: E402


def original_sample(path, gm, im_size, lowpass, mean_L):
    """The original's per-sample work: JPEG -> Lab -> blurred ab -> per-pixel posteriors."""
    from scipy.ndimage import gaussian_filter
    from skimage.color import rgb2lab
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        side = min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        rgb = np.asarray(im.resize((im_size, im_size), Image.Resampling.BICUBIC, box=box))
    lab = rgb2lab(rgb)                                                   # float64 (S, S, 3)
    a = gaussian_filter(lab[..., 1], sigma=lowpass)
    b = gaussian_filter(lab[..., 2], sigma=lowpass)
    hue = np.mod(np.arctan2(b, a) / (2 * np.pi), 1.0)
    chroma = np.hypot(a, b) / 128.0
    post = gm.predict_proba(np.stack([hue.ravel(), chroma.ravel()], 1))  # (S*S, K)
    target = torch.from_numpy(post.T.reshape(-1, im_size, im_size).astype(np.float32))
    x = torch.from_numpy((lab[..., 0] - mean_L).astype(np.float32))[None]
    return x, target


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--orig-per-round", type=int, default=4)
    ap.add_argument("--im-size", type=int, default=256)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--lowpass", type=int, default=8)
    ap.add_argument("--shard", type=int, default=32, help="images per shard")
    args = ap.parse_args()
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    try:
        data = tmp / "data"
        generate_imagenet_like(data, args.n, seed=3, val_fraction=0.0)
        relpaths = list_split(data, "train")
        labs = []
        for c in range(0, len(relpaths), args.shard):
            p = tmp / f"lab-{c}.h5"
            build_lab_shard(data, relpaths[c:c + args.shard], args.im_size, p, sig=f"lab{c}")
            labs.append(p)
        gmm = fit_gmm(gmm_features(labs, 5000, 20, 1000, 0), args.k, 0)
        pairs = []
        for p in labs:
            q = p.with_name(p.name.replace("lab-", "labels-"))
            build_label_shard(p, gmm, args.lowpass, q, sig=q.stem)
            pairs.append((str(p), str(q)))
        mean_L = mean_lightness(labs, 10_000)
        ds = ShardDataset(pairs, flip=True)
        files = [data / rp for rp in relpaths]            # all kept: generated photos are colour
        assert len(ds) == len(files)
        gm = to_sklearn(gmm)
        rng = np.random.default_rng(0)

        default_threads = torch.get_num_threads()

        def ours(threads):
            def go():
                torch.set_num_threads(threads)
                order = rng.permutation(len(ds))
                t0 = time.perf_counter()
                for i in order:
                    ds[int(i)]
                rate = len(order) / (time.perf_counter() - t0)
                torch.set_num_threads(default_threads)
                return rate
            return go

        cursor = [0]

        def original():
            idx = [(cursor[0] + j) % len(files) for j in range(args.orig_per_round)]
            cursor[0] += args.orig_per_round
            t0 = time.perf_counter()
            for i in idx:
                original_sample(files[i], gm, args.im_size, args.lowpass, mean_L)
            return len(idx) / (time.perf_counter() - t0)

        ds[0], original_sample(files[0], gm, args.im_size, args.lowpass, mean_L)   # warm-up
        sides = [("ours", ours(1)), ("original", original), ("ours_default_threads", ours(default_threads))]
        rates = {name: [] for name, _ in sides}
        for r in range(args.rounds):
            for name, fn in (sides if r % 2 == 0 else sides[::-1]):
                rates[name].append(fn())
        ds.close()
        m_ours, m_orig = statistics.median(rates["ours"]), statistics.median(rates["original"])
        m_def = statistics.median(rates["ours_default_threads"])
        result = {"bench": "loader", "value": round(m_ours / m_orig, 1), "unit": "ratio ours/original samples/s",
                  "goal": 100, "goal_op": ">=", "ours_samples_per_s": round(m_ours, 1),
                  "original_samples_per_s": round(m_orig, 2),
                  "ours_default_threads_samples_per_s": round(m_def, 1),
                  "ratio_default_threads": round(m_def / m_orig, 1), "default_torch_threads": default_threads,
                  "paired_ratios": [round(o / g, 1) for o, g in zip(rates["ours"], rates["original"])],
                  "n_images": len(ds), "rounds": args.rounds, "orig_per_round": args.orig_per_round,
                  "im_size": args.im_size, "k": args.k, "lowpass": args.lowpass,
                  "seconds": round(time.perf_counter() - t_start, 1)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
