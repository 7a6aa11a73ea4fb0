"""Low-pass targets and their per-pixel cluster posteriors.

The original blurred the hue as a scalar, so the wrap-around at red (hue 0 ==
1) smeared into green; here the a and b planes are low-passed first and only
then turned into hue/chroma.
"""
import numpy as np
from scipy.ndimage import gaussian_filter

from .color import ab_to_hue_chroma
from .gmm import posteriors


#: Lab shards also hold their a/b summed over SUM_BLOCK x SUM_BLOCK pixel blocks ("ab_sums",
#: int16: |sum| <= 64 x 128).  A label stage whose low-pass factor is a multiple of SUM_BLOCK
#: reads those (4 KB per 256 px image, raw) instead of decompressing the 131 KB of a/b, half
#: of its time, with the same labels bit for bit: block sums of block sums are block sums.
SUM_BLOCK = 8


def block_sums(x, factor: int, dtype=None) -> np.ndarray:
    """(..., H, W) -> (..., H/f, W/f) sums over f x f blocks: exact integers (int32, or `dtype`)
    for integer input, float32 otherwise.  First over groups of f rows (adds whole rows:
    vectorised), then over groups of f columns of the f-times smaller result (a slow
    short-axis reduction)."""
    x = np.asarray(x)
    acc = dtype or (np.int32 if np.issubdtype(x.dtype, np.integer) else np.float32)
    *lead, h, w = x.shape
    if h % factor or w % factor:
        raise ValueError(f"image size {h}x{w} is not a multiple of the low-pass factor {factor}")
    if factor == 1:
        return x.astype(acc)
    small = x.reshape(*lead, h // factor, factor, w).sum(-2, dtype=acc)
    return small.reshape(*lead, h // factor, w // factor, factor).sum(-1, dtype=acc)


def lowpass_ab(ab, factor: int, scale: float = 1.0, summed: int = 1) -> np.ndarray:
    """(..., 2, S, S) a/b planes -> float32 (..., 2, S/f, S/f): scale * (Gaussian blur of
    sigma f, downscaled by f).  Integer planes (the Lab shards' int8 a/b) are block-summed
    exactly in int32 and scaled at the low resolution: no full-size float copy (0.07 vs
    0.13 ms per 256 px image with decoding).  summed > 1: `ab` holds the a/b already summed
    over summed x summed blocks (a Lab shard's ab_sums, SUM_BLOCK), f a multiple of it.

    Done in the cheaper equivalent order: an f x f block mean (a box filter of
    variance (f^2-1)/12 px^2, then sampling), followed by the rest of the
    sigma-f Gaussian at the low resolution: sigma_low = sqrt(f^2 - (f^2-1)/12)/f.
    14x faster than blurring at full size.  Measured against that full-size blur (sampled at
    the block centres) on 256 px photos, f = 4 and 8: at most 0.7-1.5 ab units apart, at sharp
    colour edges; 0.1 on average (tests/test_labels.py).
    """
    if factor % summed:
        raise ValueError(f"low-pass factor {factor} is not a multiple of the summed blocks ({summed})")
    if factor == 1:
        return np.multiply(ab, np.float32(scale), dtype=np.float32)
    *lead, _, _ = np.shape(ab)
    small = np.multiply(block_sums(ab, factor // summed), np.float32(scale / (factor * factor)), dtype=np.float32)
    sigma_low = np.sqrt(factor ** 2 - (factor ** 2 - 1) / 12) / factor
    return gaussian_filter(small, sigma=(0,) * len(lead) + (sigma_low, sigma_low), mode="reflect")


def target_posteriors(ab, gmm: dict, factor: int, scale: float = 1.0, summed: int = 1) -> np.ndarray:
    """(..., 2, S, S) a/b (times 1 / scale; summed: see lowpass_ab) -> (..., K, S/f, S/f)
    float32 posteriors at the target resolution (a view: K is not the outermost axis in memory)."""
    small = lowpass_ab(ab, factor, scale, summed)
    features = ab_to_hue_chroma(small[..., 0, :, :], small[..., 1, :, :])   # (..., s, s, 2)
    return np.moveaxis(posteriors(features, gmm, k_first=True), 0, -3)      # (..., K, s, s)
