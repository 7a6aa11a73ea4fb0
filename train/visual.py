"""Visualisation tiles and training curves.

A tile row is, left to right (as the original, plus a decoded colourisation):
  colour image | target clusters | grayscale | predicted clusters | predicted colour
Cluster maps are argmax labels painted with the AVERAGE RGB of the true image
over each labelled region (the original's label2rgb(kind='avg')), so a good
prediction looks like a posterised copy of the photo.  The last panel decodes
the predicted posteriors to a colour: the posterior-weighted mean of the
cluster centres taken in (a, b) -- not in (hue, chroma), where averaging hues
across the red wrap-around (0 == 1) would give green -- with the input L.

Plots use matplotlib's Agg canvas directly (no global backend switch, safe in
Luigi workers and on headless machines).
"""
import csv
import math
from pathlib import Path

import numpy as np
import torch

from models.decoders import upsample_posteriors
from pipeline.atomic import atomic_path
from pipeline.color import lab_to_rgb

_SEP = 2  # pixels of white between panels and rows


def region_average(rgb, labels, n_classes):
    """Paint each label region with the mean RGB of `rgb` over that region."""
    flat = labels.reshape(-1)
    counts = np.bincount(flat, minlength=n_classes).astype(np.float64)
    out = np.zeros((n_classes, 3))
    for c in range(3):
        out[:, c] = np.bincount(flat, weights=rgb[..., c].reshape(-1).astype(np.float64),
                                minlength=n_classes)
    out /= np.maximum(counts, 1)[:, None]
    return np.round(out).astype(np.uint8)[labels]


def tile_image(rgb_true, target_post, L, pred_post, pred_ab=None) -> np.ndarray:
    """One row of panels as an (S, n*S + gaps, 3) uint8 image.

    rgb_true (S, S, 3) uint8; target_post (K, s, s) at the target resolution;
    L (S, S) lightness 0..100; pred_post (K, S', S') predicted posteriors (softmax);
    both upsampled to S as the loss does; pred_ab (2, S, S): the decoded prediction
    (the last panel, omitted when None).
    """
    rgb_true = np.asarray(rgb_true, dtype=np.uint8)
    size = rgb_true.shape[0]
    n_classes = np.asarray(target_post).shape[0]
    target, pred = (upsample_posteriors(torch.as_tensor(np.asarray(p, np.float32))[None], (size, size))[0].numpy()
                    for p in (target_post, pred_post))
    zeros = np.zeros((size, size), np.float32)
    panels = [rgb_true,
              region_average(rgb_true, target.argmax(0), n_classes),
              lab_to_rgb(np.stack([np.asarray(L, np.float32), zeros, zeros], axis=-1)),
              region_average(rgb_true, pred.argmax(0), n_classes)]
    if pred_ab is not None:
        panels.append(lab_to_rgb(np.concatenate([np.asarray(L, np.float32)[..., None],
                                                 np.moveaxis(np.asarray(pred_ab, np.float32), 0, -1)], -1)))
    return hstack(panels)


@torch.inference_mode()
def validation_tiles(colorizer, dataset, n: int) -> np.ndarray:
    """Tile rows of the first n images of a ShardDataset, as the colorizer sees them now
    (eval mode; its training mode is restored)."""
    was_training = colorizer.training
    colorizer.eval()
    rows = []
    for i in range(min(n, len(dataset))):
        v = dataset.get_visual(i)
        post = colorizer.posteriors(v["L"][None])                  # (1, K, S, S)
        ab = colorizer.decode(post, "mean")[0].cpu().numpy()
        rgb = lab_to_rgb(np.concatenate([v["L"][..., None], np.moveaxis(v["ab"], 0, -1)], -1))
        rows.append(tile_image(rgb, v["posteriors"], v["L"], post[0].cpu().numpy(), ab))
    colorizer.train(was_training)
    return tile_grid(rows)


def hstack(images, gap=_SEP):
    """uint8 (H, W_i, 3) images of equal height side by side, with white gaps."""
    h = max(im.shape[0] for im in images)
    sep = np.full((h, gap, 3), 255, np.uint8)
    parts = []
    for im in images:
        parts += [im, sep]
    return np.concatenate(parts[:-1], axis=1)


def tile_grid(rows) -> np.ndarray:
    """Stack tile rows vertically with white gaps."""
    w = max(r.shape[1] for r in rows)
    parts = []
    for r in rows:
        if r.shape[1] < w:
            r = np.pad(r, ((0, 0), (0, w - r.shape[1]), (0, 0)), constant_values=255)
        parts += [r, np.full((_SEP, w, 3), 255, np.uint8)]
    return np.concatenate(parts[:-1], axis=0)


def save_jpeg(path, image, quality=90):
    from PIL import Image
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(image, np.uint8)).save(tmp, format="JPEG", quality=quality)


def read_log(log_csv) -> list:
    with open(log_csv, newline="") as f:
        return list(csv.DictReader(f))


def _series(rows, split, key):
    xs, ys = [], []
    for r in rows:
        if r["split"] == split and r[key] not in ("", None):
            y = float(r[key])
            if math.isfinite(y):
                xs.append(int(r["iteration"]))
                ys.append(y)
    return xs, ys


def plot_curves(log_csv, out_dir) -> list:
    """Write out_dir/loss.png (train/valid loss) and out_dir/iou.png (mean IoU, pixel
    accuracy) from a log.csv; returns the paths written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_log(log_csv)
    out_dir = Path(out_dir)
    written = []
    for name, keys, ylabel in (("loss.png", ("loss",), "KL loss"),
                               ("iou.png", ("mean_iu", "acc"), "score")):
        fig = Figure(figsize=(6, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(111)
        for key in keys:
            for split, style in (("train", "-"), ("valid", "o-")):
                xs, ys = _series(rows, split, key)
                if xs:
                    ax.plot(xs, ys, style, markersize=3, label=f"{split} {key}")
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
        fig.tight_layout()
        path = out_dir / name
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        written.append(path)
    return written
