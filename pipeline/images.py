"""Robust loading of source photos as fixed-size square RGB arrays.

`load_rgb` (or `load_rgb_with_size`, which also returns the source's
displayed width and height) is the single entry point the pipeline uses to
read a photo.  It either returns a ``uint8`` array of shape ``(im_size, im_size, 3)`` or raises
`SkipImage` with a short machine-readable ``reason`` (see `REASONS`) and a
human readable ``detail``.  The caller records ``(path, reason, detail)`` and
moves on; nothing is ever silently replaced by another image or padded.

Design notes
------------
* Decoding uses PIL.  The file header is parsed first (``Image.open`` is
  lazy), so oversized images ("decompression bombs") are refused from their
  declared size before any pixel is decoded.
* PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` must stay ``False``: with it
  PIL pads truncated files with grey, which would poison the training data.
  This module never sets it, and `load_rgb` refuses to run (RuntimeError) if
  some other code enabled it globally.
* Grayscale photos carry no colour to learn from, so they are skipped with
  reason ``"grayscale"``: both grayscale *modes* (decided from the header,
  without decoding) and RGB files whose channels are (nearly) equal
  everywhere (decided on the resized image).
* Transparency (RGBA, LA, P/PA with a transparency entry) is composited on
  a white background rather than dropped: the colour values stored under
  fully transparent pixels are arbitrary (often black or leftovers from an
  editor), and white is how such images are normally displayed.
* Geometry: the shorter side is scaled to ``im_size`` and the centre
  ``im_size x im_size`` square is kept.  The networks need square inputs of a
  fixed size; scaling the shorter side preserves the aspect ratio (no
  stretching of objects, which would distort the statistics the model
  learns), and the centre usually holds the subject.  Images smaller than
  ``im_size`` (even 1x1) are upscaled.  Crop and resize happen in one
  ``Image.resize(box=...)`` call with an antialiasing filter.
* Speed: JPEGs at least four times as large as needed are decoded at a
  reduced DCT scale (``Image.draft``, see `DRAFT_OVERSAMPLE`), and
  ``reducing_gap`` lets PIL do a cheap box reduction before the precise
  filter.  EXIF orientation is applied after the resize (on the small
  square) - centre crops commute with the eight EXIF transpositions, so the
  result equals transposing first.
"""

from __future__ import annotations

import functools
import os
import zlib
from typing import Final

import numpy as np
from PIL import Image, ImageFile, JpegImagePlugin

from .regular import NotRegular, check_regular, open_regular

__all__ = [
    "SkipImage",
    "REASONS",
    "GRAYSCALE_MODES",
    "DEFAULT_MAX_PIXELS",
    "check_image_file",
    "load_rgb",
    "load_rgb_with_size",
]

#: Default pixel limit: PIL's own hard limit (2 * Image.MAX_IMAGE_PIXELS).
#: File name extensions taken as images (plain dataset folders, colorize inputs).
IMAGE_EXTENSIONS: Final[frozenset[str]] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"})


def is_image_name(name: str) -> bool:
    """An image file name by extension; hidden names (".x", macOS "._x") are not."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


DEFAULT_MAX_PIXELS: Final[int] = 89_478_485 * 2

#: Every reason `SkipImage` may carry.
REASONS: Final[tuple[str, ...]] = (
    "missing",          # the path does not exist
    "not_a_file",       # a directory, socket, ... instead of a regular file
    "unreadable",       # os-level error (permissions, I/O error)
    "empty",            # 0-byte file
    "undecodable",      # not an image / unknown format / corrupt data
    "truncated",        # header fine but the pixel data ends early
    "too_large",        # more pixels than allowed (decompression bomb)
    "grayscale",        # no colour information
    "unsupported_mode", # a PIL mode we cannot convert to RGB
)

#: PIL modes that can only hold grayscale data.
GRAYSCALE_MODES: Final[frozenset[str]] = frozenset(
    {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
)

#: Resampling filter.  PIL widens the kernel by the scale factor when
#: downscaling, so this is a properly antialiased filter.  Per ~500x375 JPEG to
#: 256 here: decoding 0.7 ms, resizing 1.25 ms with BICUBIC, 0.85 with BILINEAR,
#: 1.7 with LANCZOS.  BILINEAR would make preprocessing ~8 % faster, but its
#: softer images made the 30-iteration over-fit in tests/test_evaluate.py fall
#: below the gray baseline at 32 px, so the sharper BICUBIC stays.
RESAMPLE: Final = Image.Resampling.BICUBIC
#: See PIL's ``Image.resize``: a box reduction by an integer factor is done
#: first as long as the remaining scale factor stays >= this value. 3.0 is
#: visually indistinguishable from the exact filter and much faster.
REDUCING_GAP: Final[float] = 3.0
#: JPEGs are decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, ``Image.draft``)
#: only down to this many times the target size, so that the bicubic filter still does
#: the last >= 2x of the reduction.  Lab error against a full decode + resize, on photos
#: reduced 4-8x (tests/test_images.py): mean <= 0.4, max <= 5 with 2; with 1 (decoding
#: down to the target itself, ~1.5x faster at 64-128 px) mean up to 1.9, max up to 19.
DRAFT_OVERSAMPLE: Final[int] = 2

# EXIF orientation -> transposition making the image upright
# (the same table as PIL.ImageOps.exif_transpose).
_EXIF_ORIENTATION_TAG: Final[int] = 0x0112
_TRANSPOSE_FOR_ORIENTATION: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES: Final = frozenset({
    Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE,
    Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270,
})


class SkipImage(Exception):
    """A source file that cannot be used as a colour training photo.

    ``reason`` is one of `REASONS` (a short category used for counting),
    ``detail`` a human readable explanation.  Picklable, so it can cross
    process boundaries (joblib / multiprocessing).
    """

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


def check_image_file(path) -> None:
    """The checks made before opening an image file (pipeline.regular: nothing opens a FIFO,
    a device or a symbolic link loop): raises SkipImage "missing", "unreadable",
    "not_a_file" or "empty", whose detail does not name the file."""
    try:
        st = check_regular(path)
    except NotRegular as e:
        raise SkipImage(e.reason, e.detail) from None
    if st.st_size == 0:
        raise SkipImage("empty", "empty file (0 bytes)")


def _check_size(w: int, h: int, max_pixels: int) -> None:
    if w <= 0 or h <= 0:
        raise SkipImage("undecodable", f"invalid image size {w} x {h}")
    n = w * h
    if n > max_pixels:
        raise SkipImage(
            "too_large",
            f"{w} x {h} = {n} pixels exceeds the limit of {max_pixels}",
        )


def _composite_on_white(im: Image.Image) -> Image.Image:
    """RGBA/LA image -> RGB/L, alpha-composited over white."""
    a = np.asarray(im)
    alpha = a[..., -1:].astype(np.uint16)
    color = a[..., :-1].astype(np.uint16)
    # out = color * alpha/255 + 255 * (1 - alpha/255), rounded
    out = (color * alpha + 255 * (255 - alpha) + 127) // 255
    out = out.astype(np.uint8)
    if out.shape[-1] == 1:
        return Image.fromarray(out[..., 0], "L")
    return Image.fromarray(out, "RGB")


def _int_to_l(im: Image.Image) -> Image.Image:
    """16/32-bit integer grayscale -> 8 bits by scaling (not clipping).

    ``I;16*`` modes are scaled from [0, 65535].  Mode ``I`` (32-bit) has no
    declared range: values are clipped to [0, 65535] and scaled from 16 bits
    when any value exceeds 255, otherwise taken as 8-bit data.
    """
    a = np.asarray(im)
    if im.mode.startswith("I;16"):
        full = 65535
    else:
        a = np.clip(a, 0, 65535)
        full = 65535 if a.size and a.max() > 255 else 255
    a = a.astype(np.uint32)
    out = (a * 255 + full // 2) // full
    return Image.fromarray(out.astype(np.uint8), "L")


def _float_to_l(im: Image.Image) -> Image.Image:
    """Float grayscale -> 8 bits.

    The range is inferred: data within [0, 1] is taken as [0, 1], within
    [0, 255] as 8-bit, otherwise as 16-bit; NaN becomes 0.
    """
    a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0)
    hi = float(a.max()) if a.size else 0.0
    full = 1.0 if hi <= 1.0 else (255.0 if hi <= 255.0 else 65535.0)
    out = np.clip(np.rint(a * (255.0 / full)), 0, 255).astype(np.uint8)
    return Image.fromarray(out, "L")


@functools.lru_cache(maxsize=1)
def _lab_to_srgb():
    from PIL import ImageCms

    return ImageCms.buildTransform(
        ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
    )


def has_alpha(im: Image.Image) -> bool:
    """An image whose transparency to_rgb composites on white."""
    return im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
        im.mode == "P" and "transparency" in im.info)


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert a loaded image of any PIL mode to mode RGB."""
    mode = im.mode
    if mode == "RGB":
        return im
    if has_alpha(im):
        if mode in ("RGBa", "PA", "P"):
            im = im.convert("RGBA")
        elif mode == "La":
            im = im.convert("LA")
        im = _composite_on_white(im)
        return im.convert("RGB") if im.mode != "RGB" else im
    if mode.startswith("I"):
        return _int_to_l(im).convert("RGB")
    if mode == "F":
        return _float_to_l(im).convert("RGB")
    if mode == "1":
        return im.convert("L").convert("RGB")
    if mode == "LAB":
        # PIL's plain convert() does not do colorimetry for LAB; use LittleCMS
        try:
            from PIL import ImageCms

            return ImageCms.applyTransform(im, _lab_to_srgb())
        except Exception as e:  # ImageCms missing or failing
            raise SkipImage("unsupported_mode", f"cannot convert LAB to RGB: {e}") from e
    # L, P, CMYK, YCbCr, RGBX, HSV, LAB ... via PIL's converters
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as e:
        raise SkipImage("unsupported_mode", f"cannot convert mode {mode} to RGB: {e}") from e


def _channel_spread(rgb) -> int:
    """max over pixels of max(|R-G|, |G-B|) of a uint8 (..., 3) array."""
    a = rgb.astype(np.int16)
    return int(max(np.abs(a[..., 0] - a[..., 1]).max(initial=0), np.abs(a[..., 1] - a[..., 2]).max(initial=0)))


def _square_box(w: int, h: int) -> tuple[float, float, float, float]:
    """Centre square of a w x h image, in (fractional) source pixels."""
    side = min(w, h)
    x0 = (w - side) / 2.0
    y0 = (h - side) / 2.0
    return (x0, y0, x0 + side, y0 + side)


def load_rgb(
    path: str | os.PathLike,
    im_size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    allow_grayscale: bool = False,
    gray_tolerance: int = 2,
) -> np.ndarray:
    """Load a photo as a C-contiguous uint8 array of shape (im_size, im_size, 3).

    See `load_rgb_with_size`, which also returns the original size.
    """
    return load_rgb_with_size(
        path, im_size, max_pixels,
        allow_grayscale=allow_grayscale, gray_tolerance=gray_tolerance,
    )[0]


def load_rgb_with_size(
    path: str | os.PathLike,
    im_size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    allow_grayscale: bool = False,
    gray_tolerance: int = 2,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Like `load_rgb`, plus the source image's ``(width, height)`` as
    displayed (after EXIF orientation, before any resizing).

    Load a photo as a C-contiguous uint8 array of shape (im_size, im_size, 3).

    Steps: header check (existence, size limit), decode (JPEG at reduced DCT
    scale when possible; animated images -> first frame), conversion of any
    PIL mode to RGB (alpha composited on white, 16-bit data scaled to 8 bits),
    shorter side scaled to ``im_size`` and centre-cropped, EXIF orientation
    applied, grayscale check.

    Raises `SkipImage` (reason in `REASONS`) for unusable files.
    ``allow_grayscale=True`` returns grayscale images (R=G=B) instead of
    skipping them.  An RGB image counts as grayscale when, after resizing,
    max|R-G| and max|G-B| are both <= ``gray_tolerance``.
    ``max_pixels`` larger than PIL's hard limit (2 * Image.MAX_IMAGE_PIXELS)
    has no effect: PIL refuses such files while parsing the header, which is
    reported as ``"too_large"`` too.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is enabled; truncated files "
            "would be padded with grey instead of being detected. Leave it False."
        )
    im_size = int(im_size)
    if im_size < 1:
        raise ValueError(f"im_size must be >= 1, got {im_size}")
    path = os.fspath(path)

    try:
        check_image_file(path)
    except SkipImage as e:
        raise SkipImage(e.reason, f"{e.detail}: {path}") from None

    try:
        fh = open_regular(path)                      # never a FIFO swapped in since the check
    except NotRegular as e:
        raise SkipImage(e.reason, f"{e.detail}: {path}") from None

    with fh:
        try:
            im = Image.open(fh)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise SkipImage("too_large", f"refused by PIL before decoding: {e}") from None
        except Image.UnidentifiedImageError:
            raise SkipImage("undecodable", f"not a recognised image file: {path}") from None
        except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as e:
            raise SkipImage("undecodable", f"cannot parse header: {e}") from None

        with im:
            w, h = im.size
            _check_size(w, h, max_pixels)
            if not allow_grayscale and im.mode in GRAYSCALE_MODES:
                raise SkipImage("grayscale", f"grayscale image mode {im.mode}")
            extent = (w, h)  # the image's size in decoded pixels (fractional after draft)
            least = DRAFT_OVERSAMPLE * im_size
            if isinstance(im, JpegImagePlugin.JpegImageFile) and min(w, h) >= 2 * least:
                # libjpeg decodes directly at 1/2, 1/4 or 1/8 scale, keeping both
                # sides >= least (also for MPO, a JPEG subclass).
                drafted = im.draft("RGB", (least, least))   # (mode, (0, 0, w/s, h/s))
                if drafted:
                    extent = drafted[1][2:]
            try:
                im.load()
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                raise SkipImage("too_large", str(e)) from None
            except OSError as e:
                msg = str(e)
                if "truncated" in msg:
                    raise SkipImage("truncated", f"{msg}: {path}") from None
                raise SkipImage("undecodable", f"{msg}: {path}") from None
            except (SyntaxError, ValueError, EOFError, zlib.error, IndexError) as e:
                raise SkipImage("undecodable", f"{type(e).__name__}: {e}: {path}") from None

            try:
                orientation = im.getexif().get(_EXIF_ORIENTATION_TAG, 1)
            except Exception:  # corrupt EXIF: not a reason to drop the photo
                orientation = 1

            rgb = to_rgb(im)
            # Not rgb.size: libjpeg rounds a drafted side up (741 px at 1/4 -> 186
            # pixels holding 185.25 px of image); centring on the rounded size
            # shifted the crop by up to (s - 1) / 2 source pixels at scale 1/s.
            out = rgb.resize(
                (im_size, im_size),
                RESAMPLE,
                box=_square_box(*extent),
                reducing_gap=REDUCING_GAP,
            )
            del rgb

    try:
        method = _TRANSPOSE_FOR_ORIENTATION.get(int(orientation))
    except (TypeError, ValueError):
        method = None
    if method is not None:
        out = out.transpose(method)
        if method in _SWAPS_AXES:
            w, h = h, w

    arr = np.asarray(out)
    if not (arr.flags.c_contiguous and arr.flags.writeable):
        arr = np.array(arr, order="C")
    assert arr.shape == (im_size, im_size, 3) and arr.dtype == np.uint8

    # A colour photo nearly always shows its colour in 1/8 of its rows, so only
    # grayscale-looking images pay for the full check.
    if not allow_grayscale and _channel_spread(arr[::8]) <= gray_tolerance:
        spread = _channel_spread(arr)
        if spread <= gray_tolerance:
            raise SkipImage("grayscale", f"RGB image without colour (max |R-G|, |G-B| = {spread} "
                                         f"<= {gray_tolerance})")
    return arr, (int(w), int(h))
