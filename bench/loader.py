"""Loader throughput: train.data.ShardDataset vs the original's on-the-fly sample path.

  ours      ShardDataset(pairs, mean_L, flip=True)[i] for shuffled indices i, one process
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

--what-if also times WhatIfShardDataset (the proposed ShardDataset changes, defined in this
file) on the same shards and on uncompressed copies of the Lab shards.

    .venv/bin/python bench/loader.py [--n 64] [--rounds 9] [--orig-per-round 4] [--what-if]
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

from pipeline.datasets import generate_imagenet_like, list_split  # noqa: E402
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


class WhatIfShardDataset(ShardDataset):
    """WHAT-IF (bench only): the changes proposed for train/data.ShardDataset -- h5py
    Dataset objects cached per process next to the file handles, and the per-sample
    arithmetic (L - mean_L, flips) done in numpy instead of small torch ops.  Same outputs."""

    def _read(self, which, name, index):
        shard, row = int(self._shard[index]), int(self._row[index])
        path = self.pairs[shard][which]
        f = self._file(path)                                    # also resets caches on a new pid
        cache = self.__dict__.setdefault("_datasets", {})
        if cache.get("pid") != self._pid:
            cache.clear()
            cache["pid"] = self._pid
        ds = cache.get((path, name))
        if ds is None or not ds.id.valid:
            ds = cache[(path, name)] = f[name]
        return ds[row]

    def __getitem__(self, item):
        index, seed = item if isinstance(item, (tuple, list)) else (item, None)
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        x = self._read(0, "L", index).astype(np.float32)
        x -= np.float32(self.mean_L)
        target = self._read(1, "posteriors", index).astype(np.float32)
        if self.flip:
            gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
            if torch.rand((), generator=gen) < 0.5:
                x, target = np.ascontiguousarray(x[:, ::-1]), np.ascontiguousarray(target[..., ::-1])
        return torch.from_numpy(x)[None], torch.from_numpy(target)


def uncompressed_copy(lab_path, out_path):
    """The Lab shard rewritten with compression=None (fletcher32 kept)."""
    from pipeline.shards import read_array, read_attrs, write_shard
    arrays = {k: read_array(lab_path, k) for k in ("L", "ab", "sizes")}
    for k in ("paths", "fingerprints"):
        arrays[k] = [str(v) for v in read_array(lab_path, k)]
    write_shard(out_path, arrays, read_attrs(lab_path), compression=None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--orig-per-round", type=int, default=4)
    ap.add_argument("--im-size", type=int, default=256)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--lowpass", type=int, default=8)
    ap.add_argument("--shard", type=int, default=32, help="images per shard")
    ap.add_argument("--what-if", action="store_true",
                    help="also time WhatIfShardDataset on lzf and on uncompressed Lab shards")
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
        ds = ShardDataset(pairs, mean_L, flip=True)
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
        if args.what_if:
            # separate file copies: HDF5 shares an open dataset between handles of the same
            # file in a process, so a variant keeping datasets open would speed up `ours` too
            cp, unc = [], []
            for lab, lbl in pairs:
                c_lab, c_lbl = lab.replace("lab-", "labc-"), lbl.replace("labels-", "labelsc-")
                u_lab, u_lbl = lab.replace("lab-", "labu-"), lbl.replace("labels-", "labelsu-")
                shutil.copyfile(lab, c_lab)
                shutil.copyfile(lbl, c_lbl)
                shutil.copyfile(lbl, u_lbl)
                uncompressed_copy(lab, u_lab)
                cp.append((c_lab, c_lbl))
                unc.append((u_lab, u_lbl))
            variants = {"what_if_code": WhatIfShardDataset(cp, mean_L, flip=True),
                        "what_if_code_uncompressed": WhatIfShardDataset(unc, mean_L, flip=True)}
            for v in variants.values():                 # same samples as ours
                for i in (0, 5, len(ds) - 1):
                    a, b = ds[(i, 7 + i)], v[(i, 7 + i)]
                    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])

            def timed_variant(v, threads):
                def go():
                    torch.set_num_threads(threads)
                    order = rng.permutation(len(v))
                    t0 = time.perf_counter()
                    for i in order:
                        v[int(i)]
                    rate = len(order) / (time.perf_counter() - t0)
                    torch.set_num_threads(default_threads)
                    return rate
                return go
            for name, v in variants.items():
                sides.append((name, timed_variant(v, 1)))
                sides.append((name + "_default_threads", timed_variant(v, default_threads)))
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
                  **{f"{k}_samples_per_s": round(statistics.median(v), 1) for k, v in rates.items()
                     if k.startswith("what_if")},
                  "paired_ratios": [round(o / g, 1) for o, g in zip(rates["ours"], rates["original"])],
                  "n_images": len(ds), "rounds": args.rounds, "orig_per_round": args.orig_per_round,
                  "im_size": args.im_size, "k": args.k, "lowpass": args.lowpass,
                  "seconds": round(time.perf_counter() - t_start, 1)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
