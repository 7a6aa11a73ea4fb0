"""Images in and out of a colorizer: decoding, the two lightness planes, the merge.

For every input (any size and aspect, grayscale or colour -- colour is reduced
to its lightness first):

  1. decode it (EXIF orientation applied, any PIL mode converted as the training
     data was: pipeline.images.to_rgb) and compute its FULL-resolution lightness;
  2. resize it to the colorizer's im_size x im_size (the training images were made
     the same way: resize in sRGB, then Lab) and take that lightness as the input;
  3. the predicted a/b planes are resized back to the input's size (bilinear) and
     merged with the full-resolution lightness, so the output keeps every detail.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from pipeline.atomic import atomic_path
from pipeline.color import lab_to_rgb, rgb_to_lab
from pipeline.images import DEFAULT_MAX_PIXELS, REDUCING_GAP, RESAMPLE, SkipImage, to_rgb

_ROWS = 512              # rows converted at a time (bounds float64 temporaries on huge images)


class InputError(Exception):
    """An input that cannot be colorized; the message is one line."""


def one_line(e) -> str:
    msg = str(e).strip() or type(e).__name__
    return " ".join(msg.split())


@dataclass
class LoadedImage:
    L_full: np.ndarray      # (H, W) float32 lightness at the input's resolution
    L_small: np.ndarray     # (S, S) float32 lightness of the image resized to the network's size


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


def read_rgb(path) -> Image.Image:
    """Any image file -> PIL RGB image, EXIF orientation applied (as the training data)."""
    path = Path(path)
    if not path.exists():
        raise InputError("no such file")
    if not path.is_file():
        raise InputError("not a regular file")
    try:
        with open(path, "rb") as fh:
            im = Image.open(fh)
            if im.size[0] * im.size[1] > DEFAULT_MAX_PIXELS:
                raise InputError(f"{im.size[0]} x {im.size[1]} pixels exceeds the limit of {DEFAULT_MAX_PIXELS}")
            im.load()
            try:
                im = ImageOps.exif_transpose(im)
            except Exception:                        # corrupt EXIF: keep the stored orientation
                pass
            return as_rgb_image(im)
    except InputError:
        raise
    except Image.UnidentifiedImageError:
        raise InputError("not a recognised image file") from None
    except Exception as e:                            # decode errors of every kind
        raise InputError(f"cannot decode: {one_line(e)}") from None


def lightness(rgb) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) float32 Lab lightness, converted in row blocks."""
    rgb = np.asarray(rgb, dtype=np.uint8)
    out = np.empty(rgb.shape[:2], np.float32)
    for r in range(0, rgb.shape[0], _ROWS):
        out[r:r + _ROWS] = rgb_to_lab(rgb[r:r + _ROWS])[..., 0]
    return out


def prepare(im: Image.Image, im_size: int) -> LoadedImage:
    """A PIL RGB image -> its full-resolution lightness and the network input's."""
    small = im.resize((im_size, im_size), RESAMPLE, reducing_gap=REDUCING_GAP)
    return LoadedImage(L_full=lightness(np.asarray(im)), L_small=rgb_to_lab(np.asarray(small))[..., 0])


def load_image(path, im_size: int) -> LoadedImage:
    return prepare(read_rgb(path), im_size)


def merge_lightness(L_full, ab_small) -> np.ndarray:
    """Full-resolution lightness (H, W) + a/b (2, s, s) predicted at the network's size
    -> (H, W, 3) uint8 RGB; a/b are resized to (H, W) bilinearly."""
    L_full = np.asarray(L_full, np.float32)
    h, w = L_full.shape
    ab = torch.as_tensor(ab_small).float()
    if tuple(ab.shape[-2:]) != (h, w):
        ab = F.interpolate(ab[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    ab = ab.cpu().numpy()
    out = np.empty((h, w, 3), np.uint8)
    for r in range(0, h, _ROWS):
        lab = np.concatenate([L_full[r:r + _ROWS, :, None], np.moveaxis(ab[:, r:r + _ROWS], 0, -1)], axis=-1)
        out[r:r + _ROWS] = lab_to_rgb(lab)
    return out


def save_png(path, rgb) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(rgb, np.uint8)).save(tmp, format="PNG", compress_level=3)
