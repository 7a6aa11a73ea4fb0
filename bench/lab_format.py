"""What the compact Lab shard layout costs: today's shards vs the int16 planes they replaced.

The Lab shards hold L as uint8 (L x 255/100) and a/b as int8 (pipeline.shards.LAB_LAYOUT), a/b
szip-compressed by default; until LabShard version 4 they held int16 planes (Lab x 256).  This
bench builds both from the same images in one run and compares:

  bytes_per_image         Lab shard file bytes / image: as stored by default (a/b szip), with
                          lab_compression none, and the old int16 shard (uncompressed)
  L_err, ab_err           max / mean abs error of the decoded L and a/b vs the int16 planes
  posteriors_change       max / mean abs change of the stored label posteriors (float16, K=16,
                          low-pass 8; one GMM for both: the one FitGMM fits on the new shards),
                          and the fraction of target pixels whose argmax cluster changed
  gray / oracle           inference.evaluate.evaluate_images on both (one colorizer: the gray
                          and oracle rows do not depend on its weights): PSNR (dB) and raw
                          accuracy AuC (percentage points), new - old; goal |change| <= 0.1
  option_ab_420           the same for the option not taken: a/b as int8 means of 2 x 2
                          blocks (4:2:0 chroma, 98,304 bytes raw), upsampled bilinearly

Images: the photos bundled with scikit-image / scikit-learn (pipeline.samples) and
generated ImageNet-like JPEGs (pipeline.synthetic, --n), both at --im-size (256).
The int16 planes are rebuilt here as the old writer made them: color.lab_planes (float32),
x 256, rounded.  value = max |change| of gray and oracle PSNR over both image sets (dB).

    .venv/bin/python bench/lab_format.py [--n 200] [--im-size 256]     # ~3-6 min here
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pipeline  # noqa: E402,F401  (first: sets OPENBLAS_NUM_THREADS=1 before numpy loads)
import numpy as np  # noqa: E402

from inference.evaluate import evaluate_images  # noqa: E402
from models.colorizer import Colorizer  # noqa: E402
from pipeline.color import lab_planes  # noqa: E402
from pipeline.gmm import fit_gmm  # noqa: E402
from pipeline.images import load_rgb_with_size  # noqa: E402
from pipeline.labels import lowpass_ab, target_posteriors  # noqa: E402
from pipeline.preprocess import build_label_shard, build_lab_shard, gmm_features  # noqa: E402
from pipeline.samples import materialise_samples  # noqa: E402
from pipeline.shards import read_array, write_shard  # noqa: E402
from pipeline.splits import list_split  # noqa: E402
from pipeline.synthetic import generate_imagenet_like  # noqa: E402
from train.data import ShardDataset  # noqa: E402

OLD_SCALE = 256          # LabShard <= 4: int16 fixed point, value = round(Lab * 256)
METHODS = ("gray", "oracle/max", "oracle/mean", "oracle/annealed")


class Planes:
    """Decoded planes as evaluate_images reads a dataset (get_visual)."""

    def __init__(self, L, ab, post, paths):
        self.L, self.ab, self.post, self.paths = L, ab, post, paths

    def __len__(self):
        return len(self.L)

    def get_visual(self, i):
        return {"L": self.L[i], "ab": self.ab[i], "posteriors": self.post[i].astype(np.float32),
                "path": self.paths[i]}


def old_planes(root, relpaths, size):
    """Float32 L (N, S, S) and ab (N, 2, S, S) as decoded from the old int16 shards."""
    L = np.empty((len(relpaths), size, size), np.float32)
    ab = np.empty((len(relpaths), 2, size, size), np.float32)
    for i, rp in enumerate(relpaths):
        lab_planes(load_rgb_with_size(root / rp, size)[0], L[i], ab[i])
    return np.rint(L * OLD_SCALE) / np.float32(OLD_SCALE), np.rint(ab * OLD_SCALE) / np.float32(OLD_SCALE)


def old_labels(ab, gmm, lowpass):
    """The old label stage's stored posteriors (float16, values below 2^-14 as 0)."""
    p = np.stack([target_posteriors(a, gmm, lowpass) for a in ab])
    p[p < 2 ** -14] = 0
    return p.astype(np.float16)


def upsample2(x, axis):
    """Twice as many samples along `axis`: 3/4 * own + 1/4 * the neighbour on that side
    (centred bilinear, edges repeated: a JPEG decoder's fancy upsampling)."""
    x = np.moveaxis(x, axis, -1)
    quarter = x * np.float32(0.25)
    out = np.empty(x.shape[:-1] + (2 * x.shape[-1],), np.float32)
    out[..., 0::2] = out[..., 1::2] = x - quarter
    out[..., 2::2] += quarter[..., :-1]
    out[..., 0] += quarter[..., 0]
    out[..., 1:-1:2] += quarter[..., 1:]
    out[..., -1] += quarter[..., -1]
    return np.moveaxis(out, -1, axis)


def option_420(ab):
    """(N, 2, S, S) a/b -> int8 2 x 2 block means, decoded: upsampled bilinearly (S even)."""
    n, _, s, _ = ab.shape
    q = np.rint(ab.reshape(n, 2, s // 2, 2, s // 2, 2).mean((3, 5))).astype(np.float32)
    return upsample2(upsample2(q, -2), -1)


def changes(new, old_L, old_ab, old_post, new_post, res_new, res_old, lowpass):
    L_err = np.abs(np.stack([v["L"] for v in new]) - old_L)
    ab_err = np.abs(np.stack([v["ab"] for v in new]) - old_ab)
    post = np.abs(new_post.astype(np.float32) - old_post.astype(np.float32))       # (N, K, s, s)
    # near-gray targets: hue = atan2(b, a) is undefined at chroma 0, so a/b steps of 0.5 there
    # can move a pixel between clusters of different hue (and nearly the same gray colour)
    chroma = np.hypot(*np.moveaxis(lowpass_ab(old_ab, lowpass), 1, 0))                # (N, s, s)
    coloured = chroma >= 2
    row = {"L_err": {"max": round(float(L_err.max()), 3), "mean": round(float(L_err.mean()), 4)},
           "ab_err": {"max": round(float(ab_err.max()), 2), "mean": round(float(ab_err.mean()), 3)},
           "posteriors_change": {"max": round(float(post.max()), 4), "mean": round(float(post.mean()), 5),
                                 "argmax_changed_frac": round(float((new_post.argmax(1)
                                                                      != old_post.argmax(1)).mean()), 4),
                                 "max_where_chroma_ge_2": round(float(post.max(1)[coloured].max()), 4),
                                 "chroma_lt_2_frac": round(float(1 - coloured.mean()), 4)}}
    for m in METHODS:
        row[m] = {"psnr_old": round(res_old[m]["psnr"], 3), "psnr_new": round(res_new[m]["psnr"], 3),
                  "psnr_change": round(res_new[m]["psnr"] - res_old[m]["psnr"], 3),
                  "auc_old": round(res_old[m]["auc"], 3), "auc_new": round(res_new[m]["auc"], 3),
                  "auc_change": round(res_new[m]["auc"] - res_old[m]["auc"], 3)}
    return row


def compare(name, root, relpaths, size, k, lowpass, out):
    t0 = time.perf_counter()
    lab, lbl = out / f"{name}-lab.h5", out / f"{name}-labels.h5"
    build_lab_shard(root, relpaths, size, lab, sig=name)                     # a/b szip, as by default
    gmm = fit_gmm(gmm_features([lab], 5000, 20, 1000, 0), k, 0)
    build_label_shard(lab, gmm, lowpass, lbl, sig=name)
    ds = ShardDataset([(lab, lbl)], flip=False)
    kept = [str(p) for p in read_array(lab, "paths")]
    L_old, ab_old = old_planes(root, kept, size)
    post_old = old_labels(ab_old, gmm, lowpass)
    old_file = out / f"{name}-old.h5"
    write_shard(old_file, {"L": np.rint(L_old * OLD_SCALE).astype(np.int16),
                           "ab": np.rint(ab_old * OLD_SCALE).astype(np.int16), "paths": kept},
                {"kind": "lab"}, compression=None)

    raw = out / f"{name}-raw.h5"
    build_lab_shard(root, kept, size, raw, sig=name, compression="none")
    new = [ds.get_visual(i) for i in range(len(ds))]
    colorizer = Colorizer("fcn32s", k, 1 / 16, size, 50.0, gmm)
    colorizer.eval()
    res_old = evaluate_images(colorizer, Planes(L_old, ab_old, post_old, kept))["methods"]
    n = len(kept)
    row = {"images": n, "bytes_per_image": {"stored": round(os.path.getsize(lab) / n),
                                             "uncompressed": round(os.path.getsize(raw) / n),
                                             "old_int16": round(os.path.getsize(old_file) / n)}}
    row.update(changes(new, L_old, ab_old, post_old, read_array(lbl, "posteriors"),
                       evaluate_images(colorizer, ds)["methods"], res_old, lowpass))
    ab_420 = option_420(ab_old)
    L_new = np.stack([v["L"] for v in new])
    post_420 = old_labels(ab_420, gmm, lowpass)
    option = Planes(L_new, ab_420, post_420, kept)
    row["option_ab_420"] = changes([option.get_visual(i) for i in range(n)], L_old, ab_old, post_old, post_420,
                                   evaluate_images(colorizer, option)["methods"], res_old, lowpass)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"{name}: {json.dumps(row)}", file=sys.stderr)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="generated ImageNet-like images (default 200)")
    ap.add_argument("--im-size", type=int, default=256)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--lowpass", type=int, default=8)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-lab-format-"))
    try:
        out = tmp / "out"
        out.mkdir()
        photos = tmp / "photos"
        materialise_samples(photos)
        photo_files = sorted(set(list_split(photos, "train")) | set(list_split(photos, "val")))
        generated = tmp / "generated"
        generate_imagenet_like(generated, args.n, seed=0, val_fraction=0.0)
        rows = {"bundled_photos": compare("photos", photos, photo_files, args.im_size, args.k, args.lowpass, out),
                "imagenet_like": compare("generated", generated, list_split(generated, "train"), args.im_size,
                                         args.k, args.lowpass, out)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    psnr = max(abs(r[m]["psnr_change"]) for r in rows.values() for m in METHODS)
    psnr_420 = max(abs(r["option_ab_420"][m]["psnr_change"]) for r in rows.values() for m in METHODS)
    auc = max(abs(r[m]["auc_change"]) for r in rows.values() for m in METHODS)
    print(json.dumps({"bench": "lab_format", "value": psnr, "unit": "dB, max |PSNR change| of gray and oracle",
                      "goal": 0.1, "goal_op": "<=", "max_auc_change_pp": auc, "auc_goal_pp": 0.1,
                      "option_ab_420_max_psnr_change": psnr_420,
                      "max_bytes_per_image": max(r["bytes_per_image"]["stored"] for r in rows.values()),
                      "im_size": args.im_size, "k": args.k, "lowpass": args.lowpass, **rows}))


if __name__ == "__main__":
    main()
