"""Images in and out of a colorizer: decoding, the two lightness planes, the merge.

For every input (any size and aspect, grayscale or colour -- colour is reduced
to its lightness first):

  1. decode it (EXIF orientation applied, any PIL mode converted as the training
     data was: pipeline.images.to_rgb) and compute its FULL-resolution lightness;
  2. resize it to the colorizer's im_size x im_size (the training images were made
     the same way: resize in sRGB, then Lab) and take that lightness as the input;
  3. the predicted a/b planes are resized back to the input's size (bilinear) and
     merged with the full-resolution lightness, so the output keeps every detail;
  4. written as PNG or JPEG; an input's alpha channel is kept on a PNG output (step 1
     then takes the lightness of the input's own colours, step 2 still sees it
     composited on white, as the training data).  An output can record which input it
     was made from (source_record), in a PNG text chunk or a JPEG comment.
"""
import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, PngImagePlugin

from pipeline.atomic import atomic_path
from pipeline.color import lab_planes_to_rgb, lightness_plane, rgb_to_lab
from pipeline.images import (DEFAULT_MAX_PIXELS, REDUCING_GAP, RESAMPLE, SkipImage, check_image_file, has_alpha,
                             to_rgb)
from pipeline.regular import NotRegular, open_regular

_BLOCK = 1 << 16         # pixels converted at a time: cache-sized float32 temporaries
FORMATS = {"png": ".png", "jpg": ".jpg"}      # output format -> file suffix
DEFAULT_JPEG_QUALITY = 90
SOURCE_KEY = "colorize-fcn-source"   # PNG text key, and JPEG comment "<key>=<record>", of an output's input


class InputError(Exception):
    """An input that cannot be colorized; the message is one line."""


class TooManyPixels(InputError):
    """An input over the pixel limit (decode_image), seen from its header."""


def one_line(e) -> str:
    msg = str(e).strip() or type(e).__name__
    return " ".join(msg.split())


@dataclass
class LoadedImage:
    L_full: np.ndarray      # (H, W) float32 lightness at the input's resolution
    L_small: np.ndarray     # (S, S) float32 lightness of the image resized to the network's size
    alpha: np.ndarray = None  # (H, W) uint8 alpha when kept (keep_alpha and the input has one)
    had_alpha: bool = False   # the input has an alpha channel (kept or composited on white)


def as_rgb_image(image) -> Image.Image:
    """A PIL image of any mode, or a uint8 array (H, W) gray, (H, W, 3) RGB or (H, W, 4)
    RGBA -> a PIL RGB image (alpha composited on white, as the training data)."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise InputError(f"expected a uint8 array (H, W), (H, W, 3) or (H, W, 4), got {image.dtype} "
                             f"{image.shape}")
        image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    if not isinstance(image, Image.Image):
        raise InputError(f"expected a PIL image or a uint8 array, got {type(image).__name__}")
    if image.size[0] < 1 or image.size[1] < 1:
        raise InputError(f"empty image ({image.size[0]} x {image.size[1]})")
    try:
        return to_rgb(image)
    except SkipImage as e:
        raise InputError(str(e)) from None


def read_image(path) -> Image.Image:
    """Any image file -> a decoded PIL image of its own mode, EXIF orientation applied.
    Images up to DEFAULT_MAX_PIXELS (PIL's hard limit) are read; PIL warns from half that
    (DecompressionBombWarning), which the command line silences (inference.cli.main)."""
    try:
        check_image_file(path)                       # missing, not a file, empty (0 bytes)
    except SkipImage as e:
        raise InputError(e.detail) from None
    try:
        with open_regular(path) as fh:               # a FIFO swapped in since the check is never waited on
            return decode_image(fh)
    except NotRegular as e:
        raise InputError(e.detail) from None
    except OSError as e:                             # gone or unreadable since the check
        raise InputError(f"cannot open: {e.strerror or one_line(e)}") from None


def decode_image(fh, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An open binary file (or BytesIO) -> a decoded PIL image of its own mode, EXIF orientation
    applied; InputError (one line) for anything that is not a whole image of at most max_pixels
    (checked from the header, before any pixel is decoded)."""
    try:
        im = Image.open(fh)
        if im.size[0] * im.size[1] > max_pixels:
            raise TooManyPixels(f"{im.size[0]} x {im.size[1]} pixels exceeds the limit of {max_pixels}")
        im.load()
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:                            # corrupt EXIF: keep the stored orientation
            pass
        return im
    except InputError:
        raise
    except Image.UnidentifiedImageError:
        raise InputError("not a recognised image file") from None
    except Image.DecompressionBombError as e:         # over PIL's own limit, checked in open() too
        raise TooManyPixels(f"image size exceeds the limit of {max_pixels} pixels ({one_line(e)})") from None
    except Exception as e:                            # decode errors of every kind
        raise InputError(f"cannot decode: {one_line(e)}") from None


def lightness(rgb) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) float32 Lab lightness, converted in blocks of rows."""
    rgb = np.asarray(rgb, dtype=np.uint8)
    out = np.empty(rgb.shape[:2], np.float32)
    rows = max(1, _BLOCK // max(1, rgb.shape[1]))
    for r in range(0, rgb.shape[0], rows):
        out[r:r + rows] = lightness_plane(rgb[r:r + rows])
    return out


def small_lightness(im: Image.Image, size: int) -> np.ndarray:
    """A PIL RGB image -> (size, size) float32 lightness of it resized as the training images were
    (resize in sRGB, then Lab)."""
    small = im.resize((size, size), RESAMPLE, reducing_gap=REDUCING_GAP)
    return rgb_to_lab(np.asarray(small))[..., 0]


def prepare(im: Image.Image, im_size: int) -> LoadedImage:
    """A PIL RGB image -> its full-resolution lightness and the network input's."""
    return LoadedImage(L_full=lightness(np.asarray(im)), L_small=small_lightness(im, im_size))


def load_image(path, im_size: int, keep_alpha: bool = False) -> LoadedImage:
    """An image file -> LoadedImage.  The network always sees the image composited on white
    (as the training data); with keep_alpha, an input with an alpha channel keeps it, and its
    full-resolution lightness is that of its own (straight) colours, so that the output shown
    over any background looks like the input does."""
    im = read_image(path)
    try:
        rgb = as_rgb_image(im)
        rgba = np.asarray(im.convert("RGBA")) if keep_alpha and has_alpha(im) else None
    except InputError:
        raise
    except Exception as e:                            # conversion errors of every kind
        raise InputError(f"cannot decode: {one_line(e)}") from None
    if rgba is None:
        loaded = prepare(rgb, im_size)
        loaded.had_alpha = has_alpha(im)
        return loaded
    return LoadedImage(L_full=lightness(rgba[..., :3]), L_small=small_lightness(rgb, im_size),
                       alpha=np.ascontiguousarray(rgba[..., 3]), had_alpha=True)


def merge_lightness(L_full, ab_small) -> np.ndarray:
    """Full-resolution lightness (H, W) + a/b (2, s, s) predicted at the network's size
    -> (H, W, 3) uint8 RGB; a/b are resized to (H, W) bilinearly.  All in float32
    (pipeline.color.lab_planes_to_rgb: within one uint8 level of the float64 lab_to_rgb)."""
    L_full = np.asarray(L_full, np.float32)
    h, w = L_full.shape
    ab = torch.as_tensor(ab_small).float()
    if tuple(ab.shape[-2:]) != (h, w):
        ab = F.interpolate(ab[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return lab_planes_to_rgb(L_full, ab.cpu().numpy())


def source_record(path) -> str:
    """What an output records of its input: "<sha256 of its absolute path, 32 hex> <size> <mtime ns>".
    A digest, not the path: outputs get shared, the folders they were made in need not be.
    Raises OSError when `path` cannot be stat'ed."""
    path = os.path.realpath(path)                    # never raises (a symbolic link loop: os.stat does)
    st = os.stat(path)
    digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:32]
    return f"{digest} {st.st_size} {st.st_mtime_ns}"


def recorded_source(path):
    """The source record an output file holds, or None (none, or not an image).  Reads the
    headers only: PNG text chunks come before the pixels, as does a JPEG comment."""
    try:
        with open_regular(path) as fh, Image.open(fh) as im:      # an output named like a FIFO: never waited on
            if im.format == "PNG":
                return im.info.get(SOURCE_KEY)
            comment = im.info.get("comment", b"")
    except Exception:                                # unreadable: records nothing
        return None
    text = comment.decode("latin-1") if isinstance(comment, bytes) else str(comment)
    key, sep, record = text.partition("=")
    return record if sep and key == SOURCE_KEY else None


def save_image(path, rgb, alpha=None, fmt: str = "png", quality: int = DEFAULT_JPEG_QUALITY,
               source: str = None, replace: bool = True) -> None:
    """Write (H, W, 3) uint8 RGB atomically as PNG (with `alpha` (H, W) uint8 when given: RGBA)
    or JPEG (`quality` 1-100; JPEG has no alpha, so `alpha` must be None).
    source: a source_record() to store in the file; replace=False: a `path` that exists, or
    appears while writing, is never replaced (FileExistsError, pipeline.atomic)."""
    im = Image.fromarray(np.asarray(rgb, np.uint8))
    if alpha is not None:
        if fmt != "png":
            raise ValueError(f"{fmt} cannot hold an alpha channel")
        im.putalpha(Image.fromarray(np.asarray(alpha, np.uint8)))
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose from {sorted(FORMATS)}")
    with atomic_path(path, replace=replace) as tmp:
        if fmt == "png":
            info = PngImagePlugin.PngInfo()
            if source is not None:
                info.add_text(SOURCE_KEY, source)
            im.save(tmp, format="PNG", compress_level=3, pnginfo=info)
        else:
            extra = {"comment": f"{SOURCE_KEY}={source}"} if source is not None else {}
            im.save(tmp, format="JPEG", quality=int(quality), **extra)
