"""Colorization metrics and the evaluation report of a trained run.

Every val image (at the network's size, from the Lab + label shards) is
colorized by several methods, all merged with the image's own lightness:

  model/max, model/mean, model/annealed   the network's posteriors, each decoder
  gray                                    a = b = 0 (the grayscale baseline)
  oracle/max, oracle/mean, oracle/annealed  the TARGET posteriors (upsampled to the
                                          image size as the loss does), decoded:
                                          the best the clusters + decoder allow

Metrics per method:
  auc        raw accuracy AuC (Zhang et al.): per-pixel Euclidean a/b error in
             CIELab units; the fraction of pixels with error <= t for
             t = 0, 1, ..., 150; the area under that curve (trapezoid rule)
             divided by 150, in %.  Pixels are POOLED over the whole split
             (every pixel counts once, so large images weigh more -- here all
             have the same size).  Identical a/b planes give 100%.
  psnr       PSNR of the RGB uint8 image against the ground truth RGB (the
             shard's L and a/b converted the same way), per image, then
             averaged.  An identical image has an infinite PSNR; per-image
             values are capped at PSNR_CAP (100 dB) for the mean and the
             number of identical images is reported (psnr_identical).
  pixel_acc, mean_iou  of the argmax clusters against the argmax target
             clusters (train.metrics scores of the pooled confusion matrix).
             The model rows share them (the decoder does not change the
             argmax); gray uses the cluster most probable for a = b = 0 at every
             pixel; the oracle is the target itself (1.0 by construction).

Non-finite numbers are written to JSON as strings ("inf", "nan").
"""
import os
from pathlib import Path

import numpy as np
import torch

from models.decoders import DECODERS, DEFAULT_TEMPERATURE, upsample_posteriors
from pipeline.atomic import atomic_path, write_text_atomic
from pipeline.color import ab_to_hue_chroma, lab_to_rgb
from pipeline.gmm import posteriors
from train.data import ShardDataset
from train.metrics import scores
from train.visual import hstack

from .api import load_colorizer
from .evaluated import describe_evaluation
from .metrics import (AUC_MAX, THRESHOLDS, accuracy_curve, ab_error, auc_percent, dumps, error_histogram,
                      mean_psnr, psnr)
from .report import GALLERY_COLUMNS, upscale, write_report


# ----------------------------------------------------------------------------- methods
def method_names(decoders=DECODERS):
    return ([f"model/{d}" for d in decoders] + ["gray"] + [f"oracle/{d}" for d in decoders])


def gray_label(gmm) -> int:
    """The cluster most probable for a = b = 0 (the grayscale baseline's label)."""
    return int(np.argmax(posteriors(ab_to_hue_chroma(np.zeros(1), np.zeros(1)), gmm)[0]))


@torch.inference_mode()
def colorize_batch(colorizer, L, targets, temperature=DEFAULT_TEMPERATURE) -> dict:
    """Every method on a batch: L (N, S, S), targets (N, K, s, s) ->
    {"ab": {method: (N, 2, S, S) float32}, "labels": {method: (N, S, S) int64},
     "target_labels": (N, S, S) int64}, all numpy."""
    L = np.asarray(L, np.float32)
    n, size = L.shape[0], L.shape[-1]
    post = colorizer.posteriors(L)                                             # (N, K, S, S)
    target = upsample_posteriors(torch.as_tensor(np.asarray(targets, np.float32)).to(post.device), (size, size))
    ab, labels = {"gray": np.zeros((n, 2, size, size), np.float32)}, {}
    pred_labels, target_labels = post.argmax(1).cpu().numpy(), target.argmax(1).cpu().numpy()
    for d in DECODERS:
        ab[f"model/{d}"] = colorizer.decode(post, d, temperature).cpu().numpy()
        ab[f"oracle/{d}"] = colorizer.decode(target, d, temperature).cpu().numpy()
        labels[f"model/{d}"], labels[f"oracle/{d}"] = pred_labels, target_labels
    labels["gray"] = np.full_like(target_labels, gray_label(colorizer.gmm))
    return {"ab": ab, "labels": labels, "target_labels": target_labels}


def rgb(L, ab):
    """(S, S) lightness + (2, S, S) a/b -> (S, S, 3) uint8 RGB."""
    return lab_to_rgb(np.concatenate([np.asarray(L, np.float32)[..., None], np.moveaxis(ab, 0, -1)], axis=-1))


class _Stats:
    """Pooled counts of one method over a split."""

    def __init__(self, n_classes):
        self.hist = np.zeros(AUC_MAX + 2, np.int64)
        self.conf = np.zeros((n_classes, n_classes), np.int64)
        self.psnr, self.auc = [], []
        self.k = n_classes

    def add(self, ab, ab_true, rgb, rgb_true, labels, target_labels):
        h = error_histogram(ab_error(ab, ab_true))
        self.hist += h
        self.auc.append(auc_percent(accuracy_curve(h)))
        self.psnr.append(psnr(rgb, rgb_true))
        self.conf += np.bincount(target_labels.ravel() * self.k + labels.ravel(),
                                 minlength=self.k ** 2).reshape(self.k, self.k)

    def summary(self) -> dict:
        curve = accuracy_curve(self.hist)
        seg = scores(self.conf)
        return {"auc": auc_percent(curve), **mean_psnr(self.psnr),
                "pixel_acc": seg["acc"], "mean_iou": seg["mean_iu"], "curve": curve.tolist()}


def evaluate_images(colorizer, dataset, temperature=DEFAULT_TEMPERATURE, batch_size: int = 8,
                    on_image=None) -> dict:
    """Metrics of every method over every image of `dataset` (a train.data.ShardDataset, or
    anything with len() and get_visual(i) -> {L, ab, posteriors, path})."""
    names = method_names()
    stats = {m: _Stats(colorizer.n_classes) for m in names}
    per_image, n_pixels = [], 0
    n = len(dataset)
    for start in range(0, n, batch_size):
        items = [dataset.get_visual(i) for i in range(start, min(n, start + batch_size))]
        L = np.stack([v["L"] for v in items])
        out = colorize_batch(colorizer, L, np.stack([v["posteriors"] for v in items]), temperature)
        for j, v in enumerate(items):
            rgb_true = rgb(v["L"], v["ab"])
            row = {"path": v["path"], "auc": {}, "psnr": {}}
            for m in names:
                st = stats[m]
                st.add(out["ab"][m][j], v["ab"], rgb(v["L"], out["ab"][m][j]), rgb_true,
                       out["labels"][m][j], out["target_labels"][j])
                row["auc"][m], row["psnr"][m] = st.auc[-1], st.psnr[-1]
            per_image.append(row)
            n_pixels += v["L"].size
            if on_image:
                on_image(len(per_image), n)
    size = int(items[0]["L"].shape[-1]) if n else 0
    return {"n_images": n, "image_size": size, "n_pixels": n_pixels,
            "thresholds": THRESHOLDS.tolist(), "temperature": float(temperature),
            "methods": {m: stats[m].summary() for m in names}, "per_image": per_image}


# ----------------------------------------------------------------------------- one run
def gallery_rows(colorizer, dataset, indices, temperature) -> list:
    """One (H, W, 3) uint8 strip per index: report.GALLERY_COLUMNS left to right."""
    rows = []
    for i in indices:
        v = dataset.get_visual(i)
        out = colorize_batch(colorizer, v["L"][None], v["posteriors"][None], temperature)
        panels = [rgb(v["L"], out["ab"][m][0]) for m in GALLERY_COLUMNS[:-1]] + [rgb(v["L"], v["ab"])]
        rows.append(hstack([upscale(p) for p in panels]))
    return rows


def evaluate_run(checkpoint, out_dir, val_pairs, temperature=DEFAULT_TEMPERATURE, n_gallery: int = 4,
                 device="auto", batch_size: int = 8, info=None, on_image=None, evaluated_on=None) -> dict:
    """Evaluate a checkpoint (a run's best.pt) on the (Lab shard, label shard) pairs; write
    out_dir atomically: metrics.json, report.html, auc.png, gallery/, loss.png + iou.png
    (copied from the checkpoint's run folder).  evaluated_on: what the pairs hold
    (inference.evaluated.evaluation_record), kept in metrics.json and said in the report.
    Returns the metrics."""
    checkpoint = Path(checkpoint)
    model = load_colorizer(checkpoint, device)
    colorizer = model.colorizer
    dataset = ShardDataset(val_pairs, flip=False)
    try:
        if len(dataset) == 0:
            raise ValueError("nothing to evaluate: every image was skipped"
                             + (f" ({describe_evaluation(evaluated_on)})" if evaluated_on else ""))
        if dataset.n_classes != colorizer.n_classes:
            raise ValueError(f"label shards have K={dataset.n_classes}, the colorizer {colorizer.n_classes}")
        metrics = evaluate_images(colorizer, dataset, temperature, batch_size, on_image)
        mean_L = float(colorizer.mean_L)
        # the checkpoint as seen from the evaluation folder ("../best.pt" for a run's own): an
        # absolute path would name the old place of a moved or copied work folder
        metrics.update(checkpoint=os.path.relpath(checkpoint.resolve(), Path(out_dir).resolve()), mean_L=mean_L,
                       device=str(model.device), evaluated_on=evaluated_on)
        info = {"run": checkpoint.parent.name, **(info or {}),
                "mean_L": round(mean_L, 3), "device": str(model.device)}
        with atomic_path(out_dir) as tmp:
            tmp.mkdir(parents=True)
            files = write_report(tmp, metrics, info, lambda idx: gallery_rows(colorizer, dataset, idx, temperature),
                                 checkpoint.parent, n_gallery)
            metrics["files"] = files
            write_text_atomic(tmp / "metrics.json", dumps(metrics) + "\n")
    finally:
        dataset.close()
    return metrics
