"""Label shard storage: bytes per image and the encoding's error.

Builds one Lab shard and one label shard (K=16, im_size 256, low-pass 8, GMM fitted on
the shard as FitGMM does) from ~64 generated ImageNet-like JPEGs, then reports
  value        label shard file size / images (goal <= 32768 bytes: K*s*s at 2 bytes)
  max_abs_err  stored posteriors vs float64 posteriors (sklearn predict_proba on the same
               low-passed features), goal < 1e-3; also the error vs the pipeline's own
               float32 posteriors (the pure encoding error)
  lab_bytes_per_image  Lab shard file size / images
and what the posteriors would take raw (float16, float32) for comparison.

    .venv/bin/python bench/label_storage.py [--n 64]
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

import numpy as np  # noqa: E402

from pipeline.color import ab_to_hue_chroma  # noqa: E402
from pipeline.splits import list_split
from pipeline.synthetic import generate_imagenet_like  # noqa: E402
from pipeline.gmm import fit_gmm, posteriors, to_sklearn  # noqa: E402
from pipeline.labels import lowpass_ab  # noqa: E402
from pipeline.preprocess import build_label_shard, build_lab_shard, gmm_features  # noqa: E402
from pipeline.shards import decode_ab, read_array, read_attrs  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--im-size", type=int, default=256)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--lowpass", type=int, default=8)
    args = ap.parse_args()
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-label-storage-"))
    try:
        data = tmp / "data"
        generate_imagenet_like(data, args.n, seed=1, val_fraction=0.0)
        relpaths = list_split(data, "train")
        lab, lbl = tmp / "lab.h5", tmp / "labels.h5"
        build_lab_shard(data, relpaths, args.im_size, lab, sig="bench-lab")
        n = read_attrs(lab)["n_images"]
        gmm = fit_gmm(gmm_features([lab], 5000, 20, 1000, 0), args.k, 0)
        build_label_shard(lab, gmm, args.lowpass, lbl, sig="bench-labels")

        stored = read_array(lbl, "posteriors").astype(np.float64)       # (N, K, s, s)
        ab = decode_ab(read_array(lab, "ab"))
        gm = to_sklearn(gmm)
        err_ref = err_enc = 0.0
        sum_err = 0.0
        for i in range(n):
            small = lowpass_ab(ab[i], args.lowpass)
            feats = ab_to_hue_chroma(small[0], small[1])                  # (s, s, 2)
            ref = gm.predict_proba(feats.reshape(-1, 2).astype(np.float64))      # (s*s, K) float64
            own = posteriors(feats, gmm).reshape(-1, args.k).astype(np.float64)  # pipeline float32
            got = stored[i].reshape(args.k, -1).T
            err_ref = max(err_ref, float(np.abs(got - ref).max()))
            err_enc = max(err_enc, float(np.abs(got - own).max()))
            sum_err = max(sum_err, float(np.abs(got.sum(1) - 1).max()))
        s = args.im_size // args.lowpass
        label_bytes, lab_bytes = os.path.getsize(lbl), os.path.getsize(lab)
        result = {"bench": "label_storage", "value": round(label_bytes / n, 1), "unit": "bytes/image",
                  "goal": 32768, "goal_op": "<=",
                  "max_abs_err": err_ref, "max_abs_err_goal": 1e-3, "max_abs_err_ok": err_ref < 1e-3,
                  "max_abs_err_vs_own_float32": err_enc, "max_abs_row_sum_err": sum_err,
                  "lab_bytes_per_image": round(lab_bytes / n, 1),
                  "raw_float16_bytes_per_image": args.k * s * s * 2,
                  "raw_float32_bytes_per_image": args.k * s * s * 4,
                  "n_images": n, "k": args.k, "im_size": args.im_size, "lowpass": args.lowpass,
                  "encoding": "float16, lzf+shuffle+fletcher32, 1 image/chunk",
                  "seconds": round(time.perf_counter() - t_start, 1)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
