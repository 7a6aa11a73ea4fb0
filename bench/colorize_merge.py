"""Colorize's full-resolution merge vs its network, on one 12 MP image on the CPU.

`colorize-fcn colorize` runs the network at its input size (256 px) and then, at the
input's full resolution, resizes the predicted a/b bilinearly and converts the Lab
image to uint8 sRGB (inference.images.merge_lightness).  On a 4000x3000 photo the
merge used to cost more than the network; it is now float32 in cache-sized blocks
with a table for the sRGB encoding (pipeline.color.lab_planes_to_rgb).

  network    config 14's network (FCN-16s, width 1, K=16; untrained weights: the cost is
             the same) on one 256x256 lightness image: Colorizer.predict_ab, decoder 'annealed'.
  old merge  the previous merge: the same bilinear resize, then float64 lab_to_rgb in
             blocks of 512 rows (written out here).
  new merge  inference.images.merge_lightness.

The image is a bundled photo (skimage astronaut) resized to --width x --height; the a/b
given to the merges are its own a/b at 256x256 (a perfect prediction: a photo's range
of colours).  Rounds alternate the order of the three.  value = median new merge /
median network; goal <= 1.  Also reported: the old merge's time and the speed-up, the
accuracy of the new merge against the old (max abs uint8 difference and the fraction of
channel values that differ), the full-resolution lightness (old: rgb_to_lab in 512-row
blocks; new: inference.images.lightness), and one PNG / JPEG write of the result.
torch threads: torch's default (as the command runs).

    .venv/bin/python bench/colorize_merge.py [--rounds 3] [--width 4000] [--height 3000]
"""
import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from inference.images import lightness, merge_lightness, small_lightness  # noqa: E402
from models.colorizer import Colorizer  # noqa: E402
from pipeline.color import lab_to_rgb, rgb_to_lab  # noqa: E402
from pipeline.config import resolve_config  # noqa: E402
from pipeline.gmm import uniform_grid  # noqa: E402

_OLD_ROWS = 512


def old_merge(L_full, ab_small):
    """The merge before the float32 path (inference.images.merge_lightness as it was)."""
    h, w = L_full.shape
    ab = F.interpolate(torch.as_tensor(ab_small).float()[None], size=(h, w), mode="bilinear",
                       align_corners=False)[0].numpy()
    out = np.empty((h, w, 3), np.uint8)
    for r in range(0, h, _OLD_ROWS):
        lab = np.concatenate([L_full[r:r + _OLD_ROWS, :, None], np.moveaxis(ab[:, r:r + _OLD_ROWS], 0, -1)], -1)
        out[r:r + _OLD_ROWS] = lab_to_rgb(lab)
    return out


def old_lightness(rgb):
    out = np.empty(rgb.shape[:2], np.float32)
    for r in range(0, rgb.shape[0], _OLD_ROWS):
        out[r:r + _OLD_ROWS] = rgb_to_lab(rgb[r:r + _OLD_ROWS])[..., 0]
    return out


def timed(fn, *args):
    t0 = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - t0, result


def write_seconds(rgb, **save_args):
    buf = io.BytesIO()
    t0 = time.perf_counter()
    Image.fromarray(rgb).save(buf, **save_args)
    return round(time.perf_counter() - t0, 3), buf.tell()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--width", type=int, default=4000)
    ap.add_argument("--height", type=int, default=3000)
    ap.add_argument("--config", type=int, default=14, help="the network's config (arch FCN-16s)")
    args = ap.parse_args()
    t_start = time.perf_counter()

    import skimage.data
    photo = Image.fromarray(skimage.data.astronaut()).resize((args.width, args.height), Image.BICUBIC)
    rgb = np.asarray(photo)
    cfg = resolve_config(args.config)
    size = cfg["im_size"]
    torch.manual_seed(0)
    model = Colorizer("fcn16s", cfg["n_clusters"], cfg["width"], size, 50.0, uniform_grid(cfg["n_clusters"])).eval()
    L_full = lightness(rgb)
    L_small = small_lightness(photo, size)[None]                         # (1, S, S)
    ab_small = np.moveaxis(rgb_to_lab(np.asarray(photo.resize((size, size), Image.BICUBIC)))[..., 1:], -1, 0)

    model.predict_ab(L_small)                                            # warm-up
    sides = {"network": lambda: model.predict_ab(L_small),
             "old_merge": lambda: old_merge(L_full, ab_small),
             "new_merge": lambda: merge_lightness(L_full, ab_small),
             "old_lightness": lambda: old_lightness(rgb),
             "new_lightness": lambda: lightness(rgb)}
    times = {name: [] for name in sides}
    results = {}
    for r in range(args.rounds):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            t, results[name] = timed(sides[name])
            times[name].append(t)
    med = {name: statistics.median(v) for name, v in times.items()}
    diff = np.abs(results["new_merge"].astype(np.int16) - results["old_merge"])
    l_diff = float(np.abs(results["new_lightness"] - results["old_lightness"]).max())
    png_s, png_bytes = write_seconds(results["new_merge"], format="PNG", compress_level=3)
    jpg_s, jpg_bytes = write_seconds(results["new_merge"], format="JPEG", quality=90)
    result = {"bench": "colorize_merge", "value": round(med["new_merge"] / med["network"], 3),
              "unit": "ratio merge s / network s (one image, CPU)", "goal": 1, "goal_op": "<=",
              "network_s": round(med["network"], 3), "new_merge_s": round(med["new_merge"], 3),
              "old_merge_s": round(med["old_merge"], 3),
              "old_ratio": round(med["old_merge"] / med["network"], 3),
              "merge_speedup": round(med["old_merge"] / med["new_merge"], 1),
              "max_abs_uint8_diff": int(diff.max()), "frac_values_differing": float((diff > 0).mean()),
              "old_lightness_s": round(med["old_lightness"], 3), "new_lightness_s": round(med["new_lightness"], 3),
              "lightness_max_abs_diff": l_diff,
              "png_write_s": png_s, "png_mb": round(png_bytes / 2**20, 1),
              "jpg90_write_s": jpg_s, "jpg_mb": round(jpg_bytes / 2**20, 1),
              "times": {k: [round(x, 3) for x in v] for k, v in times.items()},
              "image": [args.height, args.width], "network": f"fcn16s width {cfg['width']} K={cfg['n_clusters']} "
                                                            f"at {size} px (config {args.config})",
              "torch_threads": torch.get_num_threads(), "rounds": args.rounds,
              "seconds": round(time.perf_counter() - t_start, 1)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
