"""Test helper: a folder of bad, odd and tricky image files.

``write_odd_files(folder)`` writes small files (at most 96x64 pixels, except
the decompression bomb, which only *claims* to be 20000x20000) and returns
``{relative filename: expected skip reason or None}``; ``None`` means a
usable colour image that `pipeline.images.load_rgb` must keep.

Most colour images show the same four-quadrant pattern (`QUADRANTS`) as
displayed, so tests can check colours (and orientation) after loading:
sample the centre of each quadrant of the loaded square.  Centre cropping
keeps quadrants in place, because the crop is centred.

Exceptions to that pattern:
  * ``tiny_1x1.png``: one pixel of `TINY_COLOUR`.
  * ``palette_transparent.png`` / ``rgba.png``: the bottom-right quadrant
    is fully transparent (expected white after compositing), and in
    ``rgba.png`` the colour stored under it is black.
  * ``animated.gif``: frame 0 is the pattern, frame 1 is all `MAGENTA`.
"""

from __future__ import annotations

import io
import os
import struct
import unicodedata
import zlib

import numpy as np
from PIL import Image

__all__ = [
    "write_odd_files",
    "colour_pattern",
    "quadrant_means",
    "QUADRANTS",
    "TINY_COLOUR",
    "MAGENTA",
    "WHITE",
    "PATTERN_FILES",
    "NON_ASCII_NAME",
    "BOMB_SIZE",
]

RED = (220, 30, 30)
GREEN = (30, 200, 40)
BLUE = (30, 40, 220)
YELLOW = (230, 220, 30)
MAGENTA = (220, 40, 200)
WHITE = (255, 255, 255)
TINY_COLOUR = (200, 60, 30)
#: Colours of the pattern's quadrants: top-left, top-right, bottom-left, bottom-right.
QUADRANTS = {"tl": RED, "tr": GREEN, "bl": BLUE, "br": YELLOW}

NON_ASCII_NAME = unicodedata.normalize("NFC", "café_ü.png")
BOMB_SIZE = (20000, 20000)

#: Kept files that show the full four-quadrant pattern once loaded.
PATTERN_FILES = (
    "good.jpg",
    "good.png",
    "cmyk.jpg",
    "rgb48.png",
    "rgb16.tif",
    "animated.gif",
    "exif_rotated.jpg",
    "exif_reference.png",
    NON_ASCII_NAME,
)


def colour_pattern(w: int, h: int, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8 four-quadrant colour pattern (optionally noisy)."""
    a = np.empty((h, w, 3), np.float64)
    a[: h // 2, : w // 2] = QUADRANTS["tl"]
    a[: h // 2, w // 2 :] = QUADRANTS["tr"]
    a[h // 2 :, : w // 2] = QUADRANTS["bl"]
    a[h // 2 :, w // 2 :] = QUADRANTS["br"]
    if noise:
        a += np.random.default_rng(seed).normal(0.0, noise, a.shape)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def quadrant_means(arr: np.ndarray) -> dict[str, np.ndarray]:
    """Mean colour of a small window at the centre of each quadrant."""
    h, w = arr.shape[:2]
    r = max(1, min(h, w) // 10)
    out = {}
    for key, (cy, cx) in {
        "tl": (h // 4, w // 4),
        "tr": (h // 4, 3 * w // 4),
        "bl": (3 * h // 4, w // 4),
        "br": (3 * h // 4, 3 * w // 4),
    }.items():
        win = arr[max(0, cy - r) : cy + r, max(0, cx - r) : cx + r]
        out[key] = win.reshape(-1, arr.shape[-1]).mean(axis=0)
    return out


# --------------------------------------------------------------------------
# raw PNG writing (PIL cannot write 48-bit RGB, nor stream a huge image)

def _chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def _png(width: int, height: int, bit_depth: int, colour_type: int,
         idat: bytes, extra: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra
            + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


def _png_rgb48(a16: np.ndarray) -> bytes:
    h, w, _ = a16.shape
    be = a16.astype(">u2")
    raw = b"".join(b"\x00" + be[y].tobytes() for y in range(h))
    return _png(w, h, 16, 2, zlib.compress(raw, 9))


def _png_bomb(width: int, height: int) -> bytes:
    """A *valid* 1-bit palette PNG of width x height, all one colour.

    The file is tiny (the rows are zeros and compress ~1000:1) but decoding
    it would need width*height bytes of memory.
    """
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed pixels
    block = row * 500
    comp = zlib.compressobj(9)
    parts = []
    full, rest = divmod(height, 500)
    for _ in range(full):
        parts.append(comp.compress(block))
    parts.append(comp.compress(row * rest))
    parts.append(comp.flush())
    plte = _chunk(b"PLTE", bytes(RED + BLUE))
    return _png(width, height, 1, 3, b"".join(parts), extra=plte)


def _jpeg_bytes(im: Image.Image, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, "JPEG", **kw)
    return b.getvalue()


def _truncate_jpeg(data: bytes) -> bytes:
    """Cut a JPEG half-way through its entropy-coded data (after the SOS
    header), so the header parses but the pixel data ends early."""
    sos = data.find(b"\xff\xda")
    assert sos > 0, "no SOS marker"
    sos_len = struct.unpack(">H", data[sos + 2 : sos + 4])[0]
    scan_start = sos + 2 + sos_len
    cut = (scan_start + len(data)) // 2
    assert scan_start < cut < len(data) - 16
    return data[:cut]


def _truncate_png(data: bytes) -> bytes:
    idat = data.find(b"IDAT")
    assert idat > 0
    (length,) = struct.unpack(">I", data[idat - 4 : idat])
    return data[: idat + 4 + length // 2]


def _corrupt_png(data: bytes) -> bytes:
    """Overwrite 64 bytes in the middle of the IDAT data (zlib stream)."""
    idat = data.find(b"IDAT")
    (length,) = struct.unpack(">I", data[idat - 4 : idat])
    mid = idat + 4 + length // 2
    b = bytearray(data)
    b[mid : mid + 64] = b"\xff" * 64
    return bytes(b)


def write_odd_files(folder: str | os.PathLike) -> dict[str, str | None]:
    """Write the odd files into ``folder`` (created if needed).

    Returns ``{relative filename: expected SkipImage reason, or None for a
    colour image that must be kept}``.
    """
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    expected: dict[str, str | None] = {}

    def put(name: str, data: bytes, reason: str | None) -> None:
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
        expected[name] = reason

    def put_im(name: str, im: Image.Image, reason: str | None, fmt: str | None = None, **kw) -> None:
        b = io.BytesIO()
        im.save(b, fmt or Image.registered_extensions()[os.path.splitext(name)[1].lower()], **kw)
        put(name, b.getvalue(), reason)

    pat = colour_pattern(96, 64)
    pat_im = Image.fromarray(pat, "RGB")

    # -- usable colour images ---------------------------------------------
    put_im("good.jpg", pat_im, None, quality=92)
    put_im("good.png", Image.fromarray(colour_pattern(80, 60), "RGB"), None)
    put_im(NON_ASCII_NAME, Image.fromarray(colour_pattern(64, 48), "RGB"), None)
    put_im("cmyk.jpg", pat_im.convert("CMYK"), None, quality=92)
    put_im("tiny_1x1.png", Image.new("RGB", (1, 1), TINY_COLOUR), None)

    # 48-bit RGB PNG (PIL reads it, but cannot write it: written by hand).
    pat16 = pat.astype(np.uint16) * 257
    put("rgb48.png", _png_rgb48(pat16), None)
    try:  # 16-bit per channel RGB TIFF, if tifffile is installed
        import tifffile

        b = io.BytesIO()
        tifffile.imwrite(b, pat16, photometric="rgb")
        put("rgb16.tif", b.getvalue(), None)
    except ImportError:
        pass

    # Palette PNG with a transparent palette entry (bottom-right quadrant).
    idx = np.zeros((64, 96), np.uint8)
    idx[:32, 48:] = 1
    idx[32:, :48] = 2
    idx[32:, 48:] = 3
    p = Image.fromarray(idx, "L").convert("P")
    palette = list(RED + GREEN + BLUE + YELLOW) + [0] * (256 * 3 - 12)
    p.putpalette(palette)
    put_im("palette_transparent.png", p, None, transparency=3)

    # RGBA: bottom-right quadrant fully transparent, black underneath.
    rgba = np.dstack([pat, np.full(pat.shape[:2], 255, np.uint8)])
    rgba[32:, 48:] = (0, 0, 0, 0)
    put_im("rgba.png", Image.fromarray(rgba, "RGBA"), None)

    # Animated GIF: frame 0 = pattern, frame 1 = magenta.
    f0 = pat_im.quantize(colors=8, dither=Image.Dither.NONE)
    f1 = Image.new("RGB", (96, 64), MAGENTA).quantize(colors=8, dither=Image.Dither.NONE)
    put_im("animated.gif", f0, None, save_all=True, append_images=[f1],
           duration=100, loop=0)

    # EXIF orientation 6 ("rotate 90 degrees clockwise to display"): store
    # the pattern rotated the other way so that, displayed, it is upright.
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = pat_im.transpose(Image.Transpose.ROTATE_90)  # 64 x 96, portrait
    put_im("exif_rotated.jpg", stored, None, quality=92, exif=exif.tobytes())
    put_im("exif_reference.png", pat_im, None)  # how it must look

    # -- files that must be skipped ---------------------------------------
    put("empty.jpg", b"", "empty")
    put("text.jpg", b"This is not a JPEG file, just some text.\n" * 4, "undecodable")

    noisy = Image.fromarray(colour_pattern(96, 64, noise=25.0, seed=1), "RGB")
    put("truncated.jpg", _truncate_jpeg(_jpeg_bytes(noisy, quality=95)), "truncated")
    b = io.BytesIO()
    noisy.save(b, "PNG")
    png_bytes = b.getvalue()
    put("truncated.png", _truncate_png(png_bytes), "truncated")
    put("corrupt.png", _corrupt_png(png_bytes), "undecodable")

    gray = (np.linspace(0, 255, 96)[None, :] * np.ones((64, 1))).astype(np.uint8)
    put_im("gray_L.jpg", Image.fromarray(gray, "L"), "grayscale", quality=92)
    gray_rgb = Image.fromarray(np.dstack([gray] * 3), "RGB")
    put_im("gray_as_rgb.png", gray_rgb, "grayscale")
    put_im("gray_as_rgb.jpg", gray_rgb, "grayscale", quality=90)
    # 16-bit grayscale: values up to 65535 (clipping to 8 bits would saturate)
    gray16 = (np.linspace(0, 65535, 96)[None, :] * np.ones((64, 1))).astype(np.uint16)
    put_im("gray16.png", Image.fromarray(gray16), "grayscale")

    put("bomb.png", _png_bomb(*BOMB_SIZE), "too_large")

    return expected


if __name__ == "__main__":  # pragma: no cover - manual inspection
    import sys

    for k, v in write_odd_files(sys.argv[1] if len(sys.argv) > 1 else "odd_files").items():
        print(f"{k:28s} {v}")
