"""sRGB <-> CIE Lab (D65) and the (hue, chroma) features the colour clusters live in.

Written for speed on uint8 input: sRGB linearisation is a 256-entry lookup
table, the rest is one 3x3 matmul and a cube root (skimage's rgb2lab is ~5x
slower because it works in float64 throughout). Agrees with skimage to <1e-3.
"""
import threading

import numpy as np

# sRGB (D65) -> XYZ, rows divided by the D65 white point so that white maps to (1, 1, 1).
_WHITE = np.array([0.95047, 1.0, 1.08883])
_RGB2XYZ = np.array([[0.412453, 0.357580, 0.180423],
                     [0.212671, 0.715160, 0.072169],
                     [0.019334, 0.119193, 0.950227]])
_RGB2XYZ_N = (_RGB2XYZ / _WHITE[:, None]).astype(np.float32)
# normalised XYZ (X/Xn, Y/Yn, Z/Zn) -> linear sRGB.  The published matrix and D65 white
# disagree by up to 8e-5, so rows are rescaled to sum to 1: a neutral colour (a = b = 0)
# then comes back exactly gray (R = G = B), not off by one level at rounding boundaries.
_XYZN2RGB = np.linalg.inv(_RGB2XYZ) * _WHITE
_XYZN2RGB /= _XYZN2RGB.sum(axis=1, keepdims=True)

_EPS = 216 / 24389      # CIE threshold on t = X/Xn in f(t)
_KAPPA = 24389 / 27     # slope of the linear segment of f(t)


def _srgb_to_linear(c):
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


_LINEAR_LUT = _srgb_to_linear(np.arange(256) / 255.0).astype(np.float32)

# Hue/chroma scaling: hue is atan2(b, a) / 2pi wrapped to [0, 1) so red (a>0, b=0)
# sits at 0 == 1 as in the original's HSV hue; chroma is hypot(a, b) / 128, about
# [0, 1] for sRGB colours.  Both axes on a unit scale keep k-means init balanced.
CHROMA_SCALE = 128.0


def _lab_f(t):
    """CIE f(t) of float32 t = X/Xn, Y/Yn or Z/Zn (any shape): a cube root, linear near 0."""
    f = _cube_root(t, out=np.empty_like(t))
    dark = t <= _EPS                                                   # linear segment of f(t)
    if dark.any():
        np.copyto(f, t * np.float32(_KAPPA / 116) + np.float32(16 / 116), where=dark)
    return f


def _check_rgb(rgb):
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.shape[-1:] != (3,):
        raise TypeError(f"expected uint8 (..., 3) RGB, got {rgb.dtype} {rgb.shape}")
    return rgb


_SCRATCH = threading.local()
#: lab_planes keeps its work arrays (63 bytes per pixel) for inputs up to this many pixels.
_SCRATCH_MAX_PIXELS = 512 * 512


def _scratch(n: int):
    """Work arrays for n pixels: index (3, n) intp, lin, t, f (3, n) float32, dark (3, n)
    bool.  The last set is kept per thread: fresh multi-MB arrays on every call cost their
    page faults each time, which was half of lab_planes' time at 256x256."""
    bufs = getattr(_SCRATCH, "bufs", None)
    if bufs is None or bufs[0].shape[1] != n:
        bufs = (np.empty((3, n), np.intp), *(np.empty((3, n), np.float32) for _ in range(3)),
                np.empty((3, n), bool))
        if n <= _SCRATCH_MAX_PIXELS:
            _SCRATCH.bufs = bufs
    return bufs


def _cube_root(t, out):
    """float32 cube root of t >= 0 into `out`, as exp(log(t) / 3): numpy's float32 log and exp
    are SIMD code and its cbrt is not (0.65 vs 3.3 ms for the 3 x 65,536 values of a 256 px
    image here; relative error <= 4e-7).  t = 0 gives exp(-inf) = 0."""
    with np.errstate(divide="ignore"):
        np.log(t, out=out)
    out *= np.float32(1 / 3)
    return np.exp(out, out=out)


def lab_planes(rgb, L_out=None, ab_out=None, L_scale: float = 1.0, ab_scale: float = 1.0):
    """uint8 (..., 3) sRGB -> L_scale * L (...) and ab_scale * ab (2, ...): L in [0, 100],
    a, b in about [-128, 127].

    Planar, because that is how the shards and the network hold them.  Writes into
    L_out / ab_out when given (any dtype: integer outputs are rounded, which with the
    scales gives the shards' storage straight from the float32 work arrays), else
    returns new float32 arrays.  Cost at 256x256: one LUT gather, one 3x3 matmul, one
    cube root and three scaled differences, all into reused work arrays.
    """
    rgb = _check_rgb(rgb)
    shape = rgb.shape[:-1]
    index, lin, t, f, dark = _scratch(rgb.size // 3)
    np.copyto(index, rgb.reshape(-1, 3).T)                             # planar, as take's intp
    np.take(_LINEAR_LUT, index, out=lin)                               # (3, P) linear RGB
    np.matmul(_RGB2XYZ_N, lin, out=t)                                  # (3, P) X/Xn, Y/Yn, Z/Zn
    _cube_root(t, out=f)
    np.less_equal(t, _EPS, out=dark)                                   # linear segment of f(t)
    if dark.any():
        np.multiply(t, np.float32(_KAPPA / 116), out=lin)
        lin += np.float32(16 / 116)
        np.copyto(f, lin, where=dark)
    fx, fy, fz = f
    L_out = np.empty(shape, np.float32) if L_out is None else L_out
    ab_out = np.empty((2,) + shape, np.float32) if ab_out is None else ab_out
    work = lin[0]                                                      # reused scratch (P,)
    for out, u, v, k, c, scale in ((L_out, fy, None, 116, -16, L_scale), (ab_out[0], fx, fy, 500, 0, ab_scale),
                                   (ab_out[1], fy, fz, 200, 0, ab_scale)):
        # out = scale * (k * (u - v) + c), with v = 0 for L
        if v is None:
            np.multiply(u, np.float32(k * scale), out=work)
        else:
            np.subtract(u, v, out=work)
            work *= np.float32(k * scale)
        if c:
            work += np.float32(c * scale)
        if np.issubdtype(out.dtype, np.integer):
            np.rint(work, out=work)
        out[...] = work.reshape(shape)
    return L_out, ab_out


def lightness_plane(rgb):
    """uint8 (..., 3) sRGB -> float32 (...) L in [0, 100]: lab_planes' L without a and b
    (a third of the work; may differ from it in the last float32 bit)."""
    rgb = _check_rgb(rgb)
    y = _LINEAR_LUT.take(rgb) @ _RGB2XYZ_N[1]                          # (...) Y/Yn
    L = _lab_f(y)
    L *= np.float32(116)
    L -= np.float32(16)
    return L


def rgb_to_lab(rgb):
    """uint8 (..., 3) sRGB -> float32 (..., 3) Lab: L in [0, 100], a, b in about [-128, 127]."""
    L, ab = lab_planes(rgb)
    return np.stack([L, ab[0], ab[1]], axis=-1)


def _linear_rgb(L, a, b, dtype):
    """Lab planes (any shape, the same for all three) -> (3, ...) linear sRGB, clipped to
    [0, 1], computed in `dtype` (the inverse of lab_planes' f(t) and matrix)."""
    L, a, b = (np.asarray(x, dtype) for x in (L, a, b))
    fy = (L + 16) / 116
    f = np.stack([fy + a / 500, fy, fy - b / 200])
    t = f ** 3
    np.copyto(t, (116 * f - 16) / _KAPPA, where=t <= _EPS)            # linear segment of f(t)
    lin = np.tensordot(_XYZN2RGB.astype(dtype, copy=False), t, axes=1)
    return np.clip(lin, 0, 1, out=lin)


def lab_to_rgb(lab):
    """float (..., 3) Lab -> uint8 (..., 3) sRGB, out-of-gamut colours clipped (float64)."""
    lab = np.asarray(lab, dtype=np.float64)
    lin = np.moveaxis(_linear_rgb(lab[..., 0], lab[..., 1], lab[..., 2], np.float64), 0, -1)
    srgb = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    return np.round(srgb * 255).astype(np.uint8)


# Linear sRGB -> uint8 sRGB by table, for lab_planes_to_rgb: the code of a linear value v is
# round(255 * encode(v)), which steps up at the thresholds _STEPS[k] = decode((k + .5) / 255).
# _CODE_AT[i] is the code at v = i / _BINS; a bin is narrower than the closest two thresholds
# (3.0e-4 apart, at the dark end), so it holds at most one and one comparison finishes the job.
_BINS = 8192
_STEPS = _srgb_to_linear((np.arange(255) + 0.5) / 255)
_CODE_AT = np.searchsorted(_STEPS, np.arange(_BINS + 1) / _BINS, side="right").astype(np.uint8)
_NEXT_STEP = np.append(_STEPS, np.inf).astype(np.float32)       # code k becomes k + 1 at or above
_BLOCK = 1 << 16                                               # pixels per block (cache-sized temporaries)


def lab_planes_to_rgb(L, ab, out=None):
    """float32 L (...) and ab (2, ...) -> uint8 (..., 3) sRGB, out-of-gamut colours clipped.

    lab_to_rgb's float32 twin for full-resolution images (the colorize merge): works in
    blocks of _BLOCK pixels in float32 and encodes by table instead of a power, ~10x faster;
    within one uint8 level of lab_to_rgb.  Writes into `out` (C-contiguous) when given."""
    L = np.ascontiguousarray(L, np.float32)
    ab = np.ascontiguousarray(ab, np.float32)
    if ab.shape != (2,) + L.shape:
        raise ValueError(f"ab {ab.shape} does not match L {L.shape}: expected {(2,) + L.shape}")
    out = np.empty(L.shape + (3,), np.uint8) if out is None else out
    flat_L, flat_ab, flat_out = L.reshape(-1), ab.reshape(2, -1), out.reshape(-1, 3)
    for i in range(0, flat_L.size, _BLOCK):
        s = slice(i, i + _BLOCK)
        lin = _linear_rgb(flat_L[s], flat_ab[0, s], flat_ab[1, s], np.float32)        # (3, n)
        code = _CODE_AT.take((lin * np.float32(_BINS)).astype(np.intp))
        code += lin >= _NEXT_STEP.take(code)
        flat_out[s] = code.T
    return out


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
