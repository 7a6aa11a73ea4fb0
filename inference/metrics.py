"""Colorization metrics: raw accuracy AuC, PSNR, strict JSON for their results.

  auc   raw accuracy AuC (Zhang et al.): per-pixel Euclidean a/b error in CIELab
        units; the fraction of pixels with error <= t for t = 0, 1, ..., 150; the
        area under that curve (trapezoid rule) divided by 150, in %.  Identical
        a/b planes give 100%.  error_histogram counts pool exactly over images.
  psnr  of RGB uint8 images; an identical image has an infinite PSNR, capped at
        PSNR_CAP (100 dB) in means (mean_psnr counts how many were identical).
"""
import json
import math
import re

import numpy as np

AUC_MAX = 150
THRESHOLDS = np.arange(AUC_MAX + 1)          # 0, 1, ..., 150 CIELab units
PSNR_CAP = 100.0                             # dB, used for identical images in the mean


# ----------------------------------------------------------------------------- metrics
def ab_error(ab_pred, ab_true) -> np.ndarray:
    """Per-pixel Euclidean distance (h, w) float64 between (2, h, w) a/b planes."""
    d = np.asarray(ab_pred, np.float64) - np.asarray(ab_true, np.float64)
    return np.sqrt((d ** 2).sum(axis=0))


def error_histogram(err) -> np.ndarray:
    """(AUC_MAX + 2,) int64 counts of ceil(error): entry t counts pixels with t-1 < e <= t,
    the last entry every pixel with e > AUC_MAX.  Its cumulative sum at t is the number of
    pixels within t (for integer t, e <= t <=> ceil(e) <= t): exact, and poolable."""
    bins = np.minimum(np.ceil(np.asarray(err, np.float64)), AUC_MAX + 1).astype(np.int64).ravel()
    return np.bincount(bins, minlength=AUC_MAX + 2)


def accuracy_curve(hist) -> np.ndarray:
    """(151,) fraction of pixels with error <= t, t = 0..150, from error_histogram counts."""
    hist = np.asarray(hist, np.float64)
    total = hist.sum()
    if total == 0:
        return np.full(len(THRESHOLDS), np.nan)
    return np.cumsum(hist)[:len(THRESHOLDS)] / total


def auc_percent(curve) -> float:
    """Area under the accuracy curve over [0, 150], normalised to 100%."""
    curve = np.asarray(curve, np.float64)
    area = float(((curve[1:] + curve[:-1]) / 2).sum())          # trapezoid rule, unit spacing
    return 100.0 * area / AUC_MAX


def raw_accuracy_auc(ab_pred, ab_true) -> float:
    """Raw accuracy AuC (%) of one prediction (pixels of this image only)."""
    return auc_percent(accuracy_curve(error_histogram(ab_error(ab_pred, ab_true))))


def psnr(rgb_pred, rgb_true) -> float:
    """PSNR in dB of two uint8 RGB images; math.inf when they are identical."""
    a, b = np.asarray(rgb_pred), np.asarray(rgb_true)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def mean_psnr(values, cap: float = PSNR_CAP) -> dict:
    """{'psnr': mean of per-image PSNRs capped at `cap`, 'psnr_identical': how many were inf}."""
    values = np.asarray(list(values), np.float64)
    if len(values) == 0:
        return {"psnr": math.nan, "psnr_identical": 0}
    return {"psnr": float(np.minimum(values, cap).mean()), "psnr_identical": int(np.isinf(values).sum())}


def json_safe(obj):
    """Replace non-finite floats by the strings 'inf', '-inf', 'nan' (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else ("nan" if math.isnan(f) else ("inf" if f > 0 else "-inf"))
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    return obj


_NUMBER_LIST = re.compile(r"\[\s*((?:-?[\d.eE+-]+|\"-?inf\"|\"nan\")(?:,\s*(?:-?[\d.eE+-]+|\"-?inf\"|\"nan\"))*)\s*\]")


def dumps(obj) -> str:
    """Strict JSON, indented, with lists of numbers kept on one line."""
    text = json.dumps(json_safe(obj), indent=1, allow_nan=False)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
