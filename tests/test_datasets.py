"""Tests for pipeline.splits, pipeline.samples and pipeline.synthetic (CPU only, fast)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import samples as samples_module, splits, synthetic
from pipeline.samples import SAMPLE_PHOTOS, SAMPLE_TINY, SAMPLE_VAL, load_sample_photo, materialise_samples
from pipeline.splits import available_splits, list_split, write_split_lists
from pipeline.synthetic import GENERATED_SIZE_RANGE, generate_imagenet_like
from pipeline.images import SkipImage, load_rgb


def _touch(root: Path, rel: str, data: bytes = b"x") -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def _no_temp_leftovers(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if ".tmp" in p.name]


# --------------------------------------------------------------------------
# split lists


def test_list_split_parses_comments_blank_lines_and_keeps_order(tmp_path):
    (tmp_path / "files_train.txt").write_text(
        "\ufeff# a comment\n\nb/2.jpg\n  ./a/1.jpg  \r\n# another\nc.png\n\n",
        encoding="utf-8",
    )
    (tmp_path / "files_val.txt").write_text("v.jpg\n", encoding="utf-8")
    assert list_split(tmp_path, "train") == ["b/2.jpg", "a/1.jpg", "c.png"]
    assert list_split(str(tmp_path), "val") == ["v.jpg"]
    assert available_splits(tmp_path) == ["train", "val"]


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ("/abs/x.jpg", "absolute"),
        ("C:\\x.jpg", "absolute"),
        ("../x.jpg", "escapes"),
        ("a/../../x.jpg", "escapes"),
        (".", "does not name a file"),
    ],
)
def test_bad_paths_name_the_list_file_and_line(tmp_path, bad, fragment):
    lf = tmp_path / "files_train.txt"
    lf.write_text(f"# header\nok.jpg\n{bad}\n", encoding="utf-8")
    with pytest.raises(ValueError) as e:
        list_split(tmp_path, "train")
    msg = str(e.value)
    assert f"{lf}:3:" in msg and fragment in msg


def test_duplicate_paths_are_an_error(tmp_path):
    (tmp_path / "files_train.txt").write_text("a.jpg\nb.jpg\n./a.jpg\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"files_train.txt:3: duplicate .*line 1"):
        list_split(tmp_path, "train")


def test_missing_split_names_the_available_ones(tmp_path):
    write_split_lists(tmp_path, {"train": ["a.jpg"], "val": ["b.jpg"], "tiny": ["a.jpg"]})
    with pytest.raises(ValueError) as e:
        list_split(tmp_path, "small")
    assert "available splits: tiny, train, val" in str(e.value)


def test_missing_root(tmp_path):
    root = tmp_path / "does_not_exist"
    for call in (lambda: list_split(root, "train"), lambda: available_splits(root)):
        with pytest.raises(FileNotFoundError) as e:
            call()
        assert str(root) in str(e.value)


def test_invalid_split_name(tmp_path):
    with pytest.raises(ValueError, match=r"invalid split name '\.\./train'"):
        list_split(tmp_path, "../train")
    with pytest.raises(ValueError, match="invalid split name 'tr ain'"):
        write_split_lists(tmp_path, {"tr ain": ["a.jpg"]})


def test_write_split_lists_round_trip_and_atomic_replace(tmp_path):
    root = tmp_path / "ds"
    paths = ["z/1.jpg", "a/café ü.png", "./b.png"]
    write_split_lists(root, {"train": paths, "val": []})
    assert list_split(root, "train") == ["z/1.jpg", "a/café ü.png", "b.png"]
    assert list_split(root, "val") == []
    write_split_lists(root, {"train": ["only.jpg"]})
    assert list_split(root, "train") == ["only.jpg"]
    assert list_split(root, "val") == []  # untouched
    assert sorted(p.name for p in root.iterdir()) == ["files_train.txt", "files_val.txt"]
    assert oct(os.stat(root / "files_train.txt").st_mode & 0o777) != oct(0o600)


@pytest.mark.parametrize("bad", ["/abs.jpg", "../up.jpg", "#hash.jpg", " pad.jpg", "a\nb.jpg"])
def test_write_split_lists_rejects_unrepresentable_paths(tmp_path, bad):
    write_split_lists(tmp_path, {"train": ["keep.jpg"]})
    with pytest.raises(ValueError, match=r"absolute path|escapes the dataset root|cannot be stored in a list "
                                         r"file|contains a NUL or newline") as e:
        write_split_lists(tmp_path, {"train": ["x.jpg", bad]})
    assert repr(bad)[1:-1] in str(e.value)
    assert list_split(tmp_path, "train") == ["keep.jpg"]  # old list intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["files_train.txt"]


# --------------------------------------------------------------------------
# plain folders


def _plain_folder(root: Path, n: int) -> list[str]:
    names = []
    for i in range(n):
        ext = [".jpg", ".JPEG", ".png", ".Tif", ".webp", ".gif", ".bmp", ".tiff"][i % 8]
        rel = f"d{i % 3}/sub{i % 2}/img_{i:03d}{ext}"
        _touch(root, rel)
        names.append(rel)
    # not images / hidden: ignored
    _touch(root, "notes.txt")
    _touch(root, "d0/._img_000.jpg")
    _touch(root, ".hidden/x.jpg")
    _touch(root, "d1/data.npy")
    return sorted(names)


def test_plain_folder_split_is_a_deterministic_partition(tmp_path):
    names = _plain_folder(tmp_path, 200)
    train, val = list_split(tmp_path, "train"), list_split(tmp_path, "val")
    assert train == sorted(train) and val == sorted(val)
    assert sorted(train + val) == names
    assert not set(train) & set(val)
    assert 5 <= len(val) <= 40  # ~10 %
    assert available_splits(tmp_path) == ["small", "train", "val"]
    assert (train, val) == (list_split(tmp_path, "train"), list_split(tmp_path, "val"))


def test_plain_folder_adding_a_file_moves_nothing(tmp_path):
    _plain_folder(tmp_path, 60)
    before = splits.plain_folder_splits(tmp_path)
    assert before["val"]
    for i in range(20):
        _touch(tmp_path, f"new/extra_{i}.jpg")
    after = splits.plain_folder_splits(tmp_path)
    for split in ("train", "val"):
        assert set(before[split]) <= set(after[split])


def test_plain_folder_small_cases(tmp_path):
    _touch(tmp_path, "one.jpg")
    assert list_split(tmp_path, "train") == ["one.jpg"]
    assert list_split(tmp_path, "val") == []
    _touch(tmp_path, "two.png")
    train, val = list_split(tmp_path, "train"), list_split(tmp_path, "val")
    assert len(train) == 1 and len(val) == 1


def test_plain_folder_unknown_split_and_empty_folder(tmp_path):
    _touch(tmp_path, "a/x.jpg")
    with pytest.raises(ValueError, match="train, val, small"):
        list_split(tmp_path, "tiny")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert available_splits(empty) == []
    with pytest.raises(ValueError, match="no image files"):
        list_split(empty, "train")


def test_list_files_take_precedence_over_plain_scan(tmp_path):
    _plain_folder(tmp_path, 10)
    write_split_lists(tmp_path, {"train": ["d0/sub0/img_000.jpg"]})
    assert list_split(tmp_path, "train") == ["d0/sub0/img_000.jpg"]
    with pytest.raises(ValueError, match="available splits: train"):
        list_split(tmp_path, "val")


# --------------------------------------------------------------------------
# sample photos


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    dest = tmp_path_factory.mktemp("samples_parent") / "samples"
    return dest, materialise_samples(dest)


def test_materialise_samples_layout(samples):
    dest, summary = samples
    assert summary["created"] is True and summary["root"] == str(dest)
    assert len(SAMPLE_PHOTOS) >= 11
    names = sorted(f"{n}.png" for n in SAMPLE_PHOTOS)
    assert summary["images"] == names
    val = [f"{n}.png" for n in SAMPLE_VAL]
    assert list_split(dest, "val") == val == list_split(dest, "small")
    train = list_split(dest, "train")
    assert sorted(train + val) == names and len(val) == 2
    tiny = list_split(dest, "tiny")
    assert tiny == [f"{n}.png" for n in SAMPLE_TINY] and set(tiny) <= set(train)
    assert available_splits(dest) == ["small", "tiny", "train", "val"]
    assert summary["splits"] == {"train": len(train), "val": 2, "small": 2, "tiny": 3}
    assert _no_temp_leftovers(dest.parent)


def _centre_square(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[:2]
    side = min(h, w)
    return a[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2]


def test_materialised_samples_are_the_bundled_photos(samples):
    dest, _ = samples
    for rel in list_split(dest, "train") + list_split(dest, "val"):
        source = load_sample_photo(Path(rel).stem)
        with Image.open(dest / rel) as im:
            assert np.array_equal(np.asarray(im), source), rel        # PNG: every pixel kept
        # ... and the loader sees them: its 32 px square has the colours of the centre square
        # (measured: mean colours within 0.5 of 255 of the source's)
        got = load_rgb(dest / rel, 32).reshape(-1, 3).mean(0)
        want = _centre_square(source).reshape(-1, 3).mean(0)
        assert np.abs(got - want).max() < 3, (rel, got, want)


def test_materialise_samples_is_idempotent(samples):
    dest, first = samples
    mtimes = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    again = materialise_samples(dest)
    assert again["created"] is False
    assert {k: again[k] for k in ("images", "splits")} == {k: first[k] for k in ("images", "splits")}
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == mtimes


def _fake_photo(name: str) -> np.ndarray:
    rng = np.random.default_rng(len(name))
    return rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)


def test_materialise_samples_atomic_on_failure_and_existing_folders(tmp_path, monkeypatch):
    calls = []

    def failing(name):
        calls.append(name)
        if len(calls) == 4:
            raise RuntimeError("boom")
        return _fake_photo(name)

    monkeypatch.setattr(samples_module, "load_sample_photo", failing)
    dest = tmp_path / "s"
    with pytest.raises(RuntimeError, match="boom"):
        materialise_samples(dest)
    assert not dest.exists() and _no_temp_leftovers(tmp_path)

    monkeypatch.setattr(samples_module, "load_sample_photo", _fake_photo)
    dest.mkdir()  # an empty folder is fine
    assert materialise_samples(dest)["created"] is True

    other = tmp_path / "other"
    other.mkdir()
    (other / "user_file.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        materialise_samples(other)
    assert (other / "user_file.txt").read_text() == "mine"


# --------------------------------------------------------------------------
# ImageNet-like generator


def _read_all(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*")) if p.is_file() and p.name != "manifest.json"
    }


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    parent = tmp_path_factory.mktemp("gen")
    summary = generate_imagenet_like(parent / "a", 12, seed=3)
    return parent, summary


def test_generate_layout_sizes_and_lists(generated):
    parent, summary = generated
    root = parent / "a"
    assert summary["created"] is True
    assert (summary["n"], summary["n_train"], summary["n_val"]) == (12, 11, 1)
    train, val = list_split(root, "train"), list_split(root, "val")
    assert len(train) == 11 and len(val) == 1
    assert train[0] == "train/0000/train_0000000.jpg"
    assert available_splits(root) == ["train", "val"]
    lo, hi = GENERATED_SIZE_RANGE
    sizes = []
    for rel in train + val:
        with Image.open(root / rel) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            w, h = im.size
        assert lo <= w <= hi and lo <= h <= hi, (rel, w, h)
        assert 400 <= max(w, h) <= 560
        sizes.append((w, h))
    assert len(set(sizes)) > 3  # sizes vary
    for rel in train[:4]:  # usable by the loader: its square shows the file's centre square
        with Image.open(root / rel) as im:
            want = _centre_square(np.asarray(im)).reshape(-1, 3).mean(0)
        got = load_rgb(root / rel, 64).reshape(-1, 3).mean(0)
        assert np.abs(got - want).max() < 3, (rel, got, want)
    assert _no_temp_leftovers(parent)


# RGB -> YIQ (NTSC): Y luma; the angle in the (I, Q) plane is the hue the generator rotates.
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_LUMA, _CHROMA = 128.0, 40.0      # every stand-in source: this luma and chroma (0..255 units)


def _flat_source(hue_deg: float):
    from PIL import Image as PILImage
    iq = _CHROMA * np.array([np.cos(np.radians(hue_deg)), np.sin(np.radians(hue_deg))])
    rgb = np.linalg.solve(_YIQ, [_LUMA, *iq])
    return PILImage.new("RGB", (640, 480), tuple(int(round(v)) for v in rgb))


def test_generated_images_are_their_split_s_sources_within_the_documented_jitter(tmp_path, monkeypatch):
    """Stand-in sources of one flat colour each (val photos at hue 0, train photos at 90 and
    270 degrees): every generated image is then one flat colour whose luma, chroma and hue
    are those of a source of its own split, scaled and rotated within the documented jitter
    (brightness 0.75-1.25, saturation 0.7-1.3, hue +-15 degrees)."""
    train_photos = [k for k in SAMPLE_PHOTOS if k not in SAMPLE_VAL]
    hue = {name: 0.0 for name in SAMPLE_VAL} | {name: 90.0 + 180 * (i % 2) for i, name in enumerate(train_photos)}
    monkeypatch.setattr(synthetic, "_source_image", lambda name: _flat_source(hue[name]))
    root = tmp_path / "flat"
    generate_imagenet_like(root, 24, seed=5, val_fraction=0.25)
    lumas = []
    for split, centres in (("val", [0.0]), ("train", [90.0, 270.0])):
        for rel in list_split(root, split):
            with Image.open(root / rel) as im:
                pixels = np.asarray(im, dtype=np.float64).reshape(-1, 3)
            assert pixels.std(0).max() < 3, rel                     # flat: no other photo mixed in
            y, i, q = _YIQ @ pixels.mean(0)
            chroma, angle = np.hypot(i, q), np.degrees(np.arctan2(q, i)) % 360
            off = min(abs((angle - c + 180) % 360 - 180) for c in centres)
            assert 0.75 * 0.98 < y / _LUMA < 1.25 * 1.02, (rel, y)
            assert 0.75 * 0.7 * 0.95 < chroma / _CHROMA < 1.25 * 1.3 * 1.05, (rel, chroma)
            assert off < 15 + 3, (rel, angle)                       # + JPEG and rounding error
            lumas.append(y / _LUMA)
    assert max(lumas) - min(lumas) > 0.2                            # the jitter is applied


def test_generate_is_deterministic_and_idempotent(generated):
    parent, _ = generated
    again = generate_imagenet_like(parent / "b", 12, seed=3)
    assert again["created"] is True
    assert _read_all(parent / "a") == _read_all(parent / "b")
    # same dest, same parameters: nothing to do
    assert generate_imagenet_like(parent / "a", 12, seed=3)["created"] is False
    # same dest, other parameters: refused, not silently mixed
    with pytest.raises(FileExistsError):
        generate_imagenet_like(parent / "a", 12, seed=4)


def test_generate_seed_matters_and_images_do_not_depend_on_n(generated):
    parent, _ = generated
    generate_imagenet_like(parent / "c", 5, seed=3)
    a, c = _read_all(parent / "a"), _read_all(parent / "c")
    assert c["train/0000/train_0000002.jpg"] == a["train/0000/train_0000002.jpg"]
    generate_imagenet_like(parent / "d", 5, seed=4)
    d = _read_all(parent / "d")
    assert d["train/0000/train_0000002.jpg"] != a["train/0000/train_0000002.jpg"]


def test_generate_parallel_equals_serial(generated):
    parent, _ = generated
    generate_imagenet_like(parent / "p", 12, seed=3, n_jobs=2)
    assert _read_all(parent / "p") == _read_all(parent / "a")


def test_generate_folders_hold_at_most_1000_files():
    assert synthetic._generated_relpath("train", 999) == "train/0000/train_0000999.jpg"
    assert synthetic._generated_relpath("train", 1000) == "train/0001/train_0001000.jpg"
    assert synthetic._n_val(1, 0.1) == 0
    assert synthetic._n_val(2, 0.1) == 1
    assert synthetic._n_val(20000, 0.1) == 2000
    assert synthetic._n_val(3, 0.9) == 2


def test_generate_argument_checks(tmp_path):
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        generate_imagenet_like(tmp_path / "x", 0)
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\), got 1\.0"):
        generate_imagenet_like(tmp_path / "x", 10, val_fraction=1.0)
    assert not (tmp_path / "x").exists()


def test_odd_files_in_a_plain_folder_are_listed_and_reported(tmp_path):
    """The plain-folder scan lists every odd file by extension; the loader
    then keeps or skips each one with a reason (what the pipeline does)."""
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from badfiles import write_odd_files

    expected = write_odd_files(tmp_path)
    listed = set(list_split(tmp_path, "train")) | set(list_split(tmp_path, "val"))
    assert listed == set(expected)
    for rel in listed:
        try:
            load_rgb(tmp_path / rel, 16)
            got = None
        except SkipImage as e:
            got = e.reason
        assert got == expected[rel], rel


def test_plain_folder_small_split_is_a_stable_subset_of_val(tmp_path):
    for i in range(30):
        (tmp_path / f"img{i:02d}.png").write_bytes(b"x")
    small, val = list_split(tmp_path, "small"), list_split(tmp_path, "val")
    assert small and set(small) <= set(val)
    assert len(small) == min(len(val), splits.PLAIN_SMALL_SIZE)
