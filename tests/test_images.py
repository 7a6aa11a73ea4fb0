"""Tests for pipeline.images (CPU only, fast)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

sys.path.insert(0, os.path.dirname(__file__))

import badfiles  # noqa: E402
from badfiles import (  # noqa: E402
    NON_ASCII_NAME,
    PATTERN_FILES,
    QUADRANTS,
    TINY_COLOUR,
    WHITE,
    colour_pattern,
    quadrant_means,
    write_odd_files,
)

from pipeline import images  # noqa: E402
from pipeline.images import (  # noqa: E402
    REASONS,
    SkipImage,
    load_rgb,
    load_rgb_with_size,
)

S = 48  # output size used by most tests


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    folder = tmp_path_factory.mktemp("odd")
    return folder, write_odd_files(folder)


def _close(actual, expected, tol):
    return np.all(np.abs(np.asarray(actual, float) - np.asarray(expected, float)) <= tol)


# --------------------------------------------------------------------------
# the odd-files folder


def test_odd_files_cover_the_required_cases(odd):
    _, expected = odd
    required = {
        "good.jpg": None, "good.png": None, "truncated.jpg": "truncated",
        "empty.jpg": "empty", "text.jpg": "undecodable", "gray_L.jpg": "grayscale",
        "gray_as_rgb.png": "grayscale", "gray16.png": "grayscale", "rgb48.png": None,
        "cmyk.jpg": None, "palette_transparent.png": None, "rgba.png": None,
        "animated.gif": None, "tiny_1x1.png": None, "exif_rotated.jpg": None,
        "bomb.png": "too_large", NON_ASCII_NAME: None,
    }
    for name, reason in required.items():
        assert expected[name] == reason, name
    for reason in expected.values():
        assert reason is None or reason in REASONS


def test_every_odd_file_is_kept_or_skipped_with_the_right_reason(odd):
    folder, expected = odd
    problems = []
    for name, reason in expected.items():
        path = folder / name
        assert path.is_file(), name
        try:
            arr = load_rgb(path, S)
        except SkipImage as e:
            if e.reason != reason:
                problems.append(f"{name}: expected {reason}, skipped as {e.reason} ({e.detail})")
            elif not e.detail:
                problems.append(f"{name}: no detail message")
            continue
        if reason is not None:
            problems.append(f"{name}: expected skip {reason!r}, but it was loaded")
            continue
        if arr.shape != (S, S, 3) or arr.dtype != np.uint8:
            problems.append(f"{name}: got {arr.dtype} {arr.shape}")
        if not (arr.flags.c_contiguous and arr.flags.writeable):
            problems.append(f"{name}: array not C-contiguous/writeable")
    assert not problems, "\n".join(problems)


def test_pattern_colours_are_preserved(odd):
    folder, expected = odd
    names = [n for n in PATTERN_FILES if n in expected]
    assert len(names) >= 8
    for name in names:
        q = quadrant_means(load_rgb(folder / name, S))
        for key, colour in QUADRANTS.items():
            assert _close(q[key], colour, 20), (name, key, q[key], colour)


def test_transparency_is_composited_on_white(odd):
    folder, _ = odd
    for name in ("palette_transparent.png", "rgba.png"):
        q = quadrant_means(load_rgb(folder / name, S))
        assert _close(q["br"], WHITE, 2), (name, q["br"])
        for key in ("tl", "tr", "bl"):
            assert _close(q[key], QUADRANTS[key], 2), (name, key)


def test_semi_transparent_pixels_are_blended(tmp_path):
    a = np.zeros((8, 8, 4), np.uint8)
    a[..., 2] = 255  # blue
    a[..., 3] = 128  # half transparent
    Image.fromarray(a, "RGBA").save(tmp_path / "half.png")
    out = load_rgb(tmp_path / "half.png", 8)
    assert _close(out, (127, 127, 255), 1)


def test_animated_gif_uses_the_first_frame(odd):
    folder, _ = odd
    with Image.open(folder / "animated.gif") as im:
        assert getattr(im, "n_frames", 1) >= 2
    q = quadrant_means(load_rgb(folder / "animated.gif", S))
    assert _close(q["tl"], QUADRANTS["tl"], 3)
    assert _close(q["br"], QUADRANTS["br"], 3)


def test_tiny_image_is_upscaled(odd):
    folder, _ = odd
    arr = load_rgb(folder / "tiny_1x1.png", 64)
    assert arr.shape == (64, 64, 3)
    assert _close(arr, TINY_COLOUR, 1)


def test_load_rgb_with_size_reports_displayed_source_size(odd):
    folder, _ = odd
    arr, size = load_rgb_with_size(folder / "good.png", S)
    assert size == (80, 60) and arr.shape == (S, S, 3)
    assert np.array_equal(arr, load_rgb(folder / "good.png", S))
    # stored 64 x 96 with orientation 6: displayed 96 x 64
    assert load_rgb_with_size(folder / "exif_rotated.jpg", S)[1] == (96, 64)
    # original size even when the JPEG was decoded at reduced scale
    assert load_rgb_with_size(folder / "good.jpg", 16)[1] == (96, 64)


def test_non_ascii_file_name(odd, tmp_path):
    folder, _ = odd
    arr = load_rgb(os.path.join(str(folder), NON_ASCII_NAME), S)   # a str path, not a Path
    q = quadrant_means(arr)
    for key, colour in QUADRANTS.items():
        assert _close(q[key], colour, 3), (key, q[key], colour)
    ascii_copy = tmp_path / "plain.png"
    ascii_copy.write_bytes((folder / NON_ASCII_NAME).read_bytes())
    assert np.array_equal(arr, load_rgb(ascii_copy, S))            # the name changes nothing


# --------------------------------------------------------------------------
# EXIF orientation


def _reference_load(im: Image.Image, size: int) -> np.ndarray:
    """Independent reference: exif_transpose first, then the same geometry."""
    im = ImageOps.exif_transpose(im).convert("RGB")
    w, h = im.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    return np.asarray(im.resize((size, size), images.RESAMPLE, box=box))


def test_exif_rotated_jpeg_matches_rotated_reference(odd):
    folder, _ = odd
    got = load_rgb(folder / "exif_rotated.jpg", S)
    with Image.open(folder / "exif_rotated.jpg") as im:
        assert im.getexif().get(0x0112) == 6
        assert im.size == (64, 96)  # stored portrait, displayed landscape
        ref = _reference_load(im, S)
    assert np.abs(got.astype(int) - ref).mean() < 2.0
    upright = load_rgb(folder / "exif_reference.png", S)
    assert np.abs(got.astype(int) - upright).mean() < 6.0
    # ignoring the tag would give a rotated picture: clearly different
    with Image.open(folder / "exif_rotated.jpg") as im:
        raw = np.asarray(im.convert("RGB").resize((S, S), box=(0, 16, 64, 80)))
    assert np.abs(got.astype(int) - raw).mean() > 30


_INVERSE = {
    Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270,
    Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90,
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_all_exif_orientations(tmp_path, orientation):
    upright = Image.fromarray(colour_pattern(90, 60), "RGB")
    method = images._TRANSPOSE_FOR_ORIENTATION.get(orientation)
    stored = upright if method is None else upright.transpose(_INVERSE.get(method, method))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.png"
    stored.save(path, exif=exif.tobytes())
    got = load_rgb(path, 30)
    with Image.open(path) as im:
        ref = _reference_load(im, 30)
    assert np.abs(got.astype(int) - ref).max() <= 1
    q = quadrant_means(got)
    for key, colour in QUADRANTS.items():
        assert _close(q[key], colour, 2), (orientation, key)


# --------------------------------------------------------------------------
# size limits / decompression bombs


def test_bomb_is_refused_quickly(odd):
    folder, _ = odd
    t = time.perf_counter()
    with pytest.raises(SkipImage) as e:
        load_rgb(folder / "bomb.png", S)
    assert time.perf_counter() - t < 1.0
    assert e.value.reason == "too_large"
    assert "400000000" in e.value.detail


def test_max_pixels_checked_from_the_header_before_decoding(odd, monkeypatch):
    folder, _ = odd

    def no_decoding(self, *a, **k):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(SkipImage) as e:
        load_rgb(folder / "good.png", S, max_pixels=1000)
    assert e.value.reason == "too_large"
    assert e.value.detail == "80 x 60 = 4800 pixels exceeds the limit of 1000"


def test_max_pixels_boundary(odd):
    folder, _ = odd
    assert np.array_equal(load_rgb(folder / "good.png", S, max_pixels=4800), load_rgb(folder / "good.png", S))
    with pytest.raises(SkipImage):
        load_rgb(folder / "good.png", S, max_pixels=4799)


def test_pil_bomb_warning_is_mapped_to_too_large(odd, monkeypatch):
    folder, _ = odd
    import warnings

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(SkipImage) as e:
            load_rgb(folder / "good.png", S)
    assert e.value.reason == "too_large"


# --------------------------------------------------------------------------
# modes and grayscale


def test_grayscale_modes_are_skipped_without_decoding(odd, monkeypatch):
    folder, _ = odd

    def no_decoding(self, *a, **k):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    for name in ("gray_L.jpg", "gray16.png"):
        with pytest.raises(SkipImage) as e:
            load_rgb(folder / name, S)
        assert e.value.reason == "grayscale"


def test_16bit_grayscale_is_scaled_not_clipped(odd):
    folder, _ = odd
    arr = load_rgb(folder / "gray16.png", 96, allow_grayscale=True)
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])
    row = arr[48, :, 0].astype(int)
    # source: a ramp 0..65535 over 96 columns, centre-cropped to columns 16..80
    assert np.all(np.diff(row) >= -1)
    assert 30 <= row[0] <= 60 and 195 <= row[-1] <= 225
    assert np.mean(row == 255) < 0.05


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_int16_conversion_exact(mode):
    a = np.array([[0, 257, 40000, 65535]], np.uint16)
    im = Image.fromarray(a).convert(mode) if mode == "I;16" else Image.frombytes(
        "I;16B", (4, 1), a.astype(">u2").tobytes())
    assert im.mode == mode
    out = np.asarray(images.to_rgb(im))
    assert out[0, :, 0].tolist() == [0, 1, 156, 255]


def test_other_grayscale_modes_convert_when_allowed(tmp_path):
    ramp = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))
    cases = {
        "f.tif": Image.fromarray(ramp, "F"),
        "i.tif": Image.fromarray((ramp * 65535).astype(np.int32), "I"),
        "one.png": Image.fromarray(ramp > 0.5).convert("1"),
        "la.png": Image.fromarray(np.dstack([(ramp * 255).astype(np.uint8),
                                             np.full((32, 32), 255, np.uint8)]), "LA"),
    }
    for name, im in cases.items():
        im.save(tmp_path / name)
        with Image.open(tmp_path / name) as check:
            assert check.mode == im.mode, name
        with pytest.raises(SkipImage) as e:
            load_rgb(tmp_path / name, 32)
        assert e.value.reason == "grayscale", name
        arr = load_rgb(tmp_path / name, 32, allow_grayscale=True)
        assert arr.shape == (32, 32, 3), name
        assert arr[:, 0].mean() < 40 and arr[:, -1].mean() > 215, name


def test_colour_modes_convert_to_rgb(tmp_path):
    from PIL import ImageCms

    red = (220, 30, 30)
    im = Image.new("RGB", (8, 8), red)
    to_lab = ImageCms.buildTransform(
        ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    variants = {m: im.convert(m) for m in ("YCbCr", "HSV", "RGBX", "RGBa", "CMYK")}
    variants["PA"] = im.convert("P", palette=Image.Palette.ADAPTIVE).convert("PA")
    variants["LAB"] = ImageCms.applyTransform(im, to_lab)
    for mode, v in variants.items():
        assert v.mode == mode
        out = images.to_rgb(v)
        assert out.mode == "RGB", mode
        assert _close(np.asarray(out)[0, 0], red, 4), (mode, np.asarray(out)[0, 0])
    # a CIELab TIFF file end to end
    variants["LAB"].save(tmp_path / "lab.tif")
    with Image.open(tmp_path / "lab.tif") as check:
        assert check.mode == "LAB"
    assert _close(load_rgb(tmp_path / "lab.tif", 4), red, 4)


def test_gray_tolerance(tmp_path):
    base = np.full((16, 16, 3), 120, np.uint8)
    near = base.copy()
    near[..., 0] += 2
    Image.fromarray(near).save(tmp_path / "near.png")
    tinted = base.copy()
    tinted[..., 0] += 3
    Image.fromarray(tinted).save(tmp_path / "tinted.png")
    with pytest.raises(SkipImage) as e:
        load_rgb(tmp_path / "near.png", 16)
    assert e.value.reason == "grayscale"
    # kept images keep their (slight) tint: same-size loads do not resample colours away
    assert (load_rgb(tmp_path / "tinted.png", 16).reshape(-1, 3) == (123, 120, 120)).all()
    assert (load_rgb(tmp_path / "near.png", 16, gray_tolerance=1).reshape(-1, 3) == (122, 120, 120)).all()


# --------------------------------------------------------------------------
# file-level errors


def test_missing_directory_and_empty(tmp_path):
    with pytest.raises(SkipImage) as e:
        load_rgb(tmp_path / "nope.jpg", S)
    assert e.value.reason == "missing"
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(SkipImage) as e:
        load_rgb(tmp_path / "dir.jpg", S)
    assert e.value.reason == "not_a_file"
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(SkipImage) as e:
        load_rgb(tmp_path / "zero.png", S)
    assert e.value.reason == "empty"


def test_truncated_images_are_not_padded(odd, monkeypatch):
    folder, _ = odd
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        load_rgb(folder / "truncated.jpg", S)


def test_skipimage_is_picklable_and_readable():
    e = pickle.loads(pickle.dumps(SkipImage("truncated", "cut at byte 10")))
    assert (e.reason, e.detail) == ("truncated", "cut at byte 10")
    assert str(e) == "truncated: cut at byte 10"
    assert type(e) is SkipImage and e.args == ("truncated", "cut at byte 10")
    bare = pickle.loads(pickle.dumps(SkipImage("empty")))
    assert (bare.reason, bare.detail, str(bare)) == ("empty", "", "empty")


def test_invalid_im_size(odd):
    folder, _ = odd
    with pytest.raises(ValueError, match="im_size must be >= 1, got 0"):
        load_rgb(folder / "good.png", 0)


# --------------------------------------------------------------------------
# geometry


@pytest.mark.parametrize("portrait", [False, True])
def test_shorter_side_scaled_and_centre_cropped(tmp_path, portrait):
    # 300 x 100: left third red, centre third green, right third blue; the
    # centre square must be exactly the green part (no stretching).
    a = np.zeros((100, 300, 3), np.uint8)
    a[:, :100] = (255, 0, 0)
    a[:, 100:200] = (0, 255, 0)
    a[:, 200:] = (0, 0, 255)
    # rows of the top half slightly brighter, to check the vertical scale
    a[:50, 100:200] = (0, 200, 0)
    if portrait:
        a = np.ascontiguousarray(a.transpose(1, 0, 2))
    Image.fromarray(a).save(tmp_path / "g.png")
    out = load_rgb(tmp_path / "g.png", 50).astype(int)
    if portrait:
        out = out.transpose(1, 0, 2)
    inner = out[2:-2, 2:-2]
    assert inner[..., 0].max() <= 3 and inner[..., 2].max() <= 3
    # the brightness step sits at row 25 of 50 (shorter side scaled 100 -> 50)
    assert _close(out[:24, 2:-2, 1], 200, 2) and _close(out[26:, 2:-2, 1], 255, 2)


def test_upscaling_non_square_small_image(tmp_path):
    Image.fromarray(colour_pattern(20, 10), "RGB").save(tmp_path / "small.png")
    out = load_rgb(tmp_path / "small.png", 64)
    assert out.shape == (64, 64, 3)
    q = quadrant_means(out)
    for key, colour in QUADRANTS.items():
        assert _close(q[key], colour, 3)


def test_large_jpeg_uses_draft_and_stays_accurate(tmp_path, monkeypatch):
    a = np.repeat(np.repeat(colour_pattern(16, 12), 100, axis=0), 100, axis=1)  # 1600 x 1200
    Image.fromarray(a).save(tmp_path / "big.jpg", quality=95)
    from PIL import JpegImagePlugin

    calls = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        res = real_draft(self, mode, size)
        calls.append((mode, size, self.size))
        return res

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    out = load_rgb(tmp_path / "big.jpg", 64)
    # decoded at 1/8 scale: 200 x 150, still >= 2 x 64 on both sides
    assert calls == [("RGB", (128, 128), (200, 150))]
    q = quadrant_means(out)
    for key, colour in QUADRANTS.items():
        assert _close(q[key], colour, 6)


@pytest.mark.parametrize("size", [(265, 265), (400, 265)])
def test_drafted_jpeg_matches_a_full_decode_in_lab(tmp_path, monkeypatch, size):
    """DCT-scaled decoding keeps quality: against a full decode + the same resize, on a
    photo reduced ~8x, Lab differs by <= 0.5 on average and <= 6 anywhere.  (Drafting
    down to the target itself gave mean 1.9 / max 15 here; centring the crop on the
    rounded-up drafted size, as before, mean 6.9 / max 61.)"""
    from PIL import JpegImagePlugin
    from skimage import data

    from pipeline.color import rgb_to_lab

    path = tmp_path / "photo.jpg"
    Image.fromarray(data.astronaut()).resize(size, Image.LANCZOS).save(path, quality=95)
    real_draft = JpegImagePlugin.JpegImageFile.draft
    scales = []

    def spy(self, mode, req):
        res = real_draft(self, mode, req)
        scales.append(res and size[0] / res[1][2])
        return res
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    drafted = rgb_to_lab(load_rgb(path, 32))
    assert scales == [4]                           # 265 -> 66.25 decoded pixels, >= 2 x 32
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", lambda self, mode, req: None)
    full = rgb_to_lab(load_rgb(path, 32))
    diff = np.abs(drafted - full).reshape(-1, 3)
    assert diff.mean(0).max() <= 0.5 and diff.max() <= 6, (diff.mean(0), diff.max(0))


# --------------------------------------------------------------------------
# fingerprint


def test_badfiles_command_writes_the_same_folder_and_lists_every_file(odd, tmp_path):
    """`python tests/badfiles.py FOLDER` (manual inspection) writes what the tests use."""
    folder, expected = odd
    proc = subprocess.run([sys.executable, badfiles.__file__, str(tmp_path / "cli")], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert proc.returncode == 0, proc.stderr
    listed = dict(line.rsplit(None, 1) for line in proc.stdout.splitlines())
    assert listed == {name: str(reason) for name, reason in expected.items()}
    assert {p.name: p.read_bytes() for p in (tmp_path / "cli").iterdir()} == \
        {p.name: p.read_bytes() for p in folder.iterdir()}
