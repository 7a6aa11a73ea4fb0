"""Datasets: a root folder of images plus split lists.

Layout
------
A dataset is a root folder plus split lists named ``files_<split>.txt``
(``files_train.txt``, ``files_val.txt``, optionally ``files_small.txt``,
``files_tiny.txt``, ...).  Each holds one path per line, relative to the
root, in POSIX form; blank lines and lines starting with ``#`` are ignored,
surrounding whitespace is stripped.  Absolute paths, paths escaping the root
and duplicates are a ``ValueError`` naming the list file and line number.
Listed files are not checked for existence here: a missing file is reported
by `pipeline.images.load_rgb` as a skip (reason ``"missing"``).

A plain folder of images without any list file is accepted too.  Every
image file below the root (by extension, see `IMAGE_EXTENSIONS`; names
starting with ``.`` are ignored, which also hides ``._foo.jpg`` macOS
resource forks and temporary folders) goes to ``train`` or ``val`` by a hash
of its relative path: ``val`` when the hash, as a number in [0, 1), is below
`PLAIN_VAL_FRACTION`.  So a file's split does not depend on which other files
exist, except for the at-least-one rule: with 2+ images and an empty ``val``
the image with the lowest hash moves to ``val``; with 2+ images and an empty
``train`` the one with the highest hash moves to ``train``; a single image
is ``train``.

Sample data
-----------
`materialise_samples` writes the colour photos bundled with scikit-image and
scikit-learn (no download needed) as PNGs, `generate_imagenet_like` makes an
ImageNet-like JPEG set of any size from them.  Both build into a hidden
temporary folder next to the destination and rename it into place, so a
destination that exists is complete.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import tempfile
import time
import unicodedata
from functools import lru_cache
from pathlib import Path, PureWindowsPath
from typing import Callable, Iterable, Mapping

import numpy as np

__all__ = [
    "IMAGE_EXTENSIONS",
    "PLAIN_SPLITS",
    "PLAIN_VAL_FRACTION",
    "SAMPLE_PHOTOS",
    "SAMPLE_VAL",
    "SAMPLE_TINY",
    "GENERATED_SIZE_RANGE",
    "list_split",
    "available_splits",
    "plain_folder_splits",
    "read_split_list",
    "write_split_lists",
    "list_file",
    "materialise_samples",
    "load_sample_photo",
    "generate_imagenet_like",
]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
)
PLAIN_SPLITS = ("train", "val", "small")
PLAIN_SMALL_SIZE = 100   # images in a plain folder's 'small' split (a subset of val)
PLAIN_VAL_FRACTION = 0.1

LIST_PREFIX = "files_"
LIST_SUFFIX = ".txt"
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_-]+$")
MANIFEST = "manifest.json"


# --------------------------------------------------------------------------
# helpers

def _umask() -> int:
    """The process umask, read without changing it (Linux), else 0o022."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _mkdtemp_next_to(dest: Path) -> Path:
    """Hidden temporary folder beside ``dest`` (same file system, so it can
    be renamed into place) with normal permissions (mkdtemp uses 0700)."""
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp

def _check_root(root: str | os.PathLike) -> Path:
    p = Path(root)
    if not p.exists():
        raise FileNotFoundError(errno.ENOENT, "dataset root does not exist", str(p))
    if not p.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "dataset root is not a directory", str(p))
    return p


def list_file(root: str | os.PathLike, split: str) -> Path:
    """Path of the list file of ``split`` (whether or not it exists)."""
    _check_split_name(split)
    return Path(root) / f"{LIST_PREFIX}{split}{LIST_SUFFIX}"


def _check_split_name(split: str) -> None:
    if not isinstance(split, str) or not _SPLIT_RE.match(split):
        raise ValueError(
            f"invalid split name {split!r}: use letters, digits, '_' and '-'"
        )


def _split_lists(root: Path) -> dict[str, Path]:
    out = {}
    for entry in os.scandir(root):
        name = entry.name
        if (name.startswith(LIST_PREFIX) and name.endswith(LIST_SUFFIX)
                and entry.is_file()):
            split = name[len(LIST_PREFIX): -len(LIST_SUFFIX)]
            if _SPLIT_RE.match(split):
                out[split] = Path(entry.path)
    return out


def _normalise_relpath(p: str) -> str:
    """Validate a root-relative path; return it normalised (POSIX form).

    Raises ValueError with a reason (without location) when invalid.
    """
    if "\x00" in p or "\n" in p or "\r" in p:
        raise ValueError(f"path {p!r} contains a NUL or newline character")
    if p.startswith(("/", "\\")) or PureWindowsPath(p).drive:
        raise ValueError(
            f"absolute path {p!r}: paths must be relative to the dataset root"
        )
    norm = posixpath.normpath(p)
    if norm == ".." or norm.startswith("../"):
        raise ValueError(f"path {p!r} escapes the dataset root")
    if norm == ".":
        raise ValueError(f"path {p!r} does not name a file below the root")
    return norm


def read_split_list(path: str | os.PathLike) -> list[str]:
    """Parse one list file (see the module docstring for the format)."""
    path = Path(path)
    out: list[str] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            try:
                rel = _normalise_relpath(s)
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: {e}") from None
            if rel in seen:
                raise ValueError(
                    f"{path}:{lineno}: duplicate path {rel!r} "
                    f"(first listed on line {seen[rel]})"
                )
            seen[rel] = lineno
            out.append(rel)
    return out


def _is_image_name(name: str) -> bool:
    return (not name.startswith(".")
            and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS)


def _iter_plain_images(root: Path) -> Iterable[str]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            if _is_image_name(name):
                rel = name if rel_dir == "." else os.path.join(rel_dir, name)
                yield rel.replace(os.sep, "/")


def _split_score(rel: str) -> float:
    """Deterministic number in [0, 1) from a relative path."""
    key = unicodedata.normalize("NFC", rel).encode("utf-8")
    h = hashlib.sha256(key).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def plain_folder_splits(root: str | os.PathLike) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...]}`` for a plain image folder (one scan).

    Ignores list files; see the module docstring for the rule.
    """
    root = _check_root(root)
    files = sorted(_iter_plain_images(root))
    scores = {rel: _split_score(rel) for rel in files}
    val = {rel for rel in files if scores[rel] < PLAIN_VAL_FRACTION}
    if len(files) >= 2:
        if not val:
            val = {min(files, key=scores.__getitem__)}
        elif len(val) == len(files):
            val.discard(max(files, key=scores.__getitem__))
    elif len(files) == 1:
        val = set()
    val_list = [f for f in files if f in val]
    # 'small': the original's quick validation subset (configs 14/15 validate on it);
    # the val images with the lowest path hashes, so it is stable as files are added.
    small = set(sorted(val_list, key=scores.__getitem__)[:PLAIN_SMALL_SIZE])
    return {
        "train": [f for f in files if f not in val],
        "val": val_list,
        "small": [f for f in val_list if f in small],
    }


def _has_any_image(root: Path) -> bool:
    for _ in _iter_plain_images(root):
        return True
    return False


# --------------------------------------------------------------------------
# public split API

def available_splits(root: str | os.PathLike) -> list[str]:
    """Sorted split names: from the list files, or ``["train", "val"]`` for a
    plain image folder, or ``[]`` if the root holds neither."""
    root = _check_root(root)
    lists = _split_lists(root)
    if lists:
        return sorted(lists)
    return sorted(PLAIN_SPLITS) if _has_any_image(root) else []


def list_split(root: str | os.PathLike, split: str) -> list[str]:
    """Relative POSIX paths of ``split``, in list order (plain folders: sorted).

    Raises FileNotFoundError if the root does not exist, ValueError for an
    unknown split (naming the available ones) or a malformed list.
    """
    root = _check_root(root)
    _check_split_name(split)
    lists = _split_lists(root)
    if lists:
        if split not in lists:
            raise ValueError(
                f"dataset {root} has no split {split!r} "
                f"(no {LIST_PREFIX}{split}{LIST_SUFFIX}); available splits: "
                f"{', '.join(sorted(lists))}"
            )
        return read_split_list(lists[split])
    if split not in PLAIN_SPLITS:
        raise ValueError(
            f"dataset {root} is a plain image folder (no {LIST_PREFIX}<split>"
            f"{LIST_SUFFIX} lists) with splits {', '.join(PLAIN_SPLITS)} only, "
            f"not {split!r}"
        )
    splits = plain_folder_splits(root)
    if not splits["train"] and not splits["val"]:
        raise ValueError(
            f"dataset {root} has no split lists ({LIST_PREFIX}<split>"
            f"{LIST_SUFFIX}) and no image files "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return splits[split]


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp uses 0600
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_split_lists(root: str | os.PathLike, splits: Mapping[str, Iterable[str]]) -> None:
    """Write ``files_<split>.txt`` for each split, atomically (temporary file
    in the same folder, then ``os.replace``).  Other list files are left
    alone.  Paths are validated and normalised; ones that would not read back
    identically (leading ``#``, surrounding whitespace) are rejected."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    texts = {}
    for split, paths in splits.items():
        _check_split_name(split)
        lines = []
        seen = set()
        for p in paths:
            p = os.fspath(p)
            if p != p.strip() or p.startswith("#"):
                raise ValueError(
                    f"split {split!r}: path {p!r} cannot be stored in a list "
                    "file (surrounding whitespace or leading '#')"
                )
            rel = _normalise_relpath(p)
            if rel in seen:
                raise ValueError(f"split {split!r}: duplicate path {rel!r}")
            seen.add(rel)
            lines.append(rel + "\n")
        texts[split] = "".join(lines)
    for split, text in texts.items():
        _atomic_write_text(list_file(root, split), text)


# --------------------------------------------------------------------------
# bundled sample photos

def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()
    return load


def _motorcycle(index: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return skimage.data.stereo_motorcycle()[index]
    return load


def _sklearn(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)
    return load


#: Colour photos shipped inside scikit-image / scikit-learn (no download).
#: Not included: skimage's ``cat`` (the same photo as ``chelsea``),
#: ``colorwheel``/``logo``/``chessboard`` (synthetic graphics) and the
#: images that need pooch downloads.
SAMPLE_PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "retina": _skimage("retina"),
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "motorcycle_left": _motorcycle(0),
    "motorcycle_right": _motorcycle(1),
    "china": _sklearn("china.jpg"),
    "flower": _sklearn("flower.jpg"),
}
#: The fixed validation photos (also the ``small`` split).
SAMPLE_VAL = ("chelsea", "coffee")
#: The fixed ``tiny`` subset of the training photos.
SAMPLE_TINY = ("astronaut", "rocket", "china")


def load_sample_photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8 array of a bundled sample photo."""
    a = np.asarray(SAMPLE_PHOTOS[name]())
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise RuntimeError(f"sample photo {name!r}: unexpected {a.dtype} {a.shape}")
    return np.ascontiguousarray(a)


def _read_manifest(dest: Path) -> dict | None:
    try:
        with open(dest / MANIFEST, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def _is_complete(dest: Path, kind: str) -> dict | None:
    """The manifest if ``dest`` holds a complete set of ``kind``, else None."""
    m = _read_manifest(dest)
    if not m or m.get("kind") != kind:
        return None
    for split in m.get("splits", {}):
        if not list_file(dest, split).is_file():
            return None
    for rel in m.get("check_files", []):
        if not (dest / rel).is_file():
            return None
    return m


def _prepare_dest(dest: Path, kind: str) -> dict | None:
    """Return the manifest if dest is complete; make way for a new build
    otherwise (an empty folder is removed; anything else is an error)."""
    m = _is_complete(dest, kind)
    if m is not None:
        return m
    if dest.exists():
        if dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()
        else:
            raise FileExistsError(
                errno.EEXIST,
                f"exists but is not a complete {kind} folder (no valid "
                f"{MANIFEST}); delete it or choose another destination",
                str(dest),
            )
    dest.parent.mkdir(parents=True, exist_ok=True)
    return None


def _publish(tmp: Path, dest: Path, kind: str) -> bool:
    """Rename the finished ``tmp`` to ``dest``.  Returns False (and removes
    ``tmp``) if a concurrent build published a complete ``dest`` first."""
    try:
        os.rename(tmp, dest)
        return True
    except OSError:
        if _is_complete(dest, kind) is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        raise


def _write_manifest(folder: Path, manifest: dict) -> None:
    _atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def materialise_samples(dest: str | os.PathLike) -> dict:
    """Write the bundled sample photos as ``<name>.png`` plus split lists.

    Splits: ``val`` = `SAMPLE_VAL`, ``train`` = the other photos,
    ``small`` = the val photos, ``tiny`` = `SAMPLE_TINY` (train photos).
    Idempotent and atomic: does nothing if ``dest`` is already complete.
    Returns ``{"root", "created", "images", "splits": {split: count}}``.
    """
    from PIL import Image

    kind = "colorize-fcn sample photos"
    dest = Path(dest)
    names = list(SAMPLE_PHOTOS)
    files = {name: f"{name}.png" for name in names}
    splits = {
        "train": [files[n] for n in names if n not in SAMPLE_VAL],
        "val": [files[n] for n in SAMPLE_VAL],
        "small": [files[n] for n in SAMPLE_VAL],
        "tiny": [files[n] for n in SAMPLE_TINY],
    }

    def summary(created: bool, m: dict) -> dict:
        return {
            "root": str(dest),
            "created": created,
            "images": sorted(m["check_files"]),
            "splits": dict(m["splits"]),
        }

    m = _prepare_dest(dest, kind)
    if m is not None:
        return summary(False, m)

    tmp = _mkdtemp_next_to(dest)
    try:
        for name in names:
            Image.fromarray(load_sample_photo(name), "RGB").save(
                tmp / files[name], "PNG", compress_level=3
            )
        write_split_lists(tmp, splits)
        manifest = {
            "kind": kind,
            "version": 1,
            "check_files": sorted(files.values()),
            "splits": {k: len(v) for k, v in splits.items()},
        }
        _write_manifest(tmp, manifest)
        created = _publish(tmp, dest, kind)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return summary(created, manifest if created else _is_complete(dest, kind))


# --------------------------------------------------------------------------
# ImageNet-like generator

GENERATOR_VERSION = 1
#: Generated images: the long side is in [400, 560], the aspect ratio in
#: about [1, 1.6] (mostly 4:3), ~20 % portrait; so every side is in this range.
GENERATED_SIZE_RANGE = (240, 560)
_FILES_PER_FOLDER = 1000
_ASPECTS = np.array([4 / 3, 3 / 2, 1.0, 5 / 4, 16 / 10])
_ASPECT_P = np.array([0.55, 0.15, 0.1, 0.1, 0.1])


_SOURCE_MAX_SHORT_SIDE = 1024

# RGB <-> YIQ; a hue rotation is a rotation of the (I, Q) chroma plane.
_RGB2YIQ = np.array([[0.299, 0.587, 0.114],
                     [0.596, -0.274, -0.322],
                     [0.211, -0.523, 0.312]])
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


@lru_cache(maxsize=None)
def _source_image(name: str):
    """Sample photo as a PIL image; the few very large ones are reduced to a
    shorter side of 1024 (crops cover >= half of it and outputs are <= 560
    pixels, so nothing visible is lost, and resizing gets ~2x cheaper)."""
    from PIL import Image

    im = Image.fromarray(load_sample_photo(name), "RGB")
    w, h = im.size
    if min(w, h) > _SOURCE_MAX_SHORT_SIDE:
        k = _SOURCE_MAX_SHORT_SIDE / min(w, h)
        im = im.resize((round(w * k), round(h * k)), Image.Resampling.LANCZOS)
    im.load()
    return im


def _jitter_matrix(brightness: float, saturation: float, hue_deg: float) -> tuple:
    """PIL ``convert("RGB", matrix)`` 12-tuple applying a hue rotation,
    a saturation scale (both in YIQ space) and a brightness factor at once."""
    c, s = np.cos(np.radians(hue_deg)), np.sin(np.radians(hue_deg))
    d = np.array([[1.0, 0.0, 0.0],
                  [0.0, saturation * c, -saturation * s],
                  [0.0, saturation * s, saturation * c]])
    m = brightness * (_YIQ2RGB @ d @ _RGB2YIQ)
    return tuple(float(x) for row in m for x in (*row, 0.0))


def _generated_relpath(split: str, i: int) -> str:
    return f"{split}/{i // _FILES_PER_FOLDER:04d}/{split}_{i:07d}.jpg"


def _make_one(split: str, i: int, seed: int, sources: tuple[str, ...]) -> bytes:
    """JPEG bytes of image ``i`` of ``split``: a function of (seed, split, i)
    only, so the result does not depend on n or on the parallel schedule."""
    from PIL import Image

    rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
    src = _source_image(sources[int(rng.integers(len(sources)))])

    aspect = float(rng.choice(_ASPECTS, p=_ASPECT_P)) * float(np.exp(rng.uniform(-0.03, 0.03)))
    long_side = int(rng.integers(400, 561))
    short_side = max(GENERATED_SIZE_RANGE[0], int(round(long_side / aspect)))
    portrait = rng.random() < 0.2
    w, h = (short_side, long_side) if portrait else (long_side, short_side)

    # random crop with the output's aspect ratio (no distortion), covering
    # 25-100 % of the largest such crop, at a random position
    sw, sh = src.size
    r = w / h
    cw, ch = (sh * r, sh) if sw / sh > r else (sw, sw / r)
    s = float(np.sqrt(rng.uniform(0.25, 1.0)))
    cw, ch = cw * s, ch * s
    x0 = float(rng.uniform(0, sw - cw))
    y0 = float(rng.uniform(0, sh - ch))
    im = src.resize((w, h), Image.Resampling.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch),
                    reducing_gap=2.0)

    flip = rng.random() < 0.5
    brightness = float(rng.uniform(0.75, 1.25))
    saturation = float(rng.uniform(0.7, 1.3))
    hue_deg = float(rng.uniform(-15.0, 15.0))
    quality = int(rng.integers(85, 96))

    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    # colour jitter in one C pass (values are clipped to [0, 255])
    im = im.convert("RGB", _jitter_matrix(brightness, saturation, hue_deg))

    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _make_chunk(tmp: str, split: str, start: int, stop: int, seed: int,
                sources: tuple[str, ...]) -> int:
    for i in range(start, stop):
        data = _make_one(split, i, seed, sources)
        path = os.path.join(tmp, _generated_relpath(split, i))
        with open(path, "wb") as f:
            f.write(data)
    return stop - start


def _n_val(n: int, val_fraction: float) -> int:
    if n < 2 or val_fraction <= 0:
        return 0
    return min(n - 1, max(1, int(round(n * val_fraction))))


def generate_imagenet_like(
    dest: str | os.PathLike,
    n: int,
    seed: int = 0,
    val_fraction: float = 0.1,
    *,
    n_jobs: int | None = None,
) -> dict:
    """Generate ``n`` ImageNet-like JPEGs (random crops/scales/flips and
    brightness/saturation/hue jitter of the bundled photos; sizes around
    500x375, see `GENERATED_SIZE_RANGE`; JPEG quality 85-95) into
    ``dest/{train,val}/NNNN/`` (at most 1000 files per folder), plus
    ``files_train.txt`` and ``files_val.txt``.

    ``round(n * val_fraction)`` images (at least 1 when n >= 2, and at least
    one train image) form ``val``; val images are made only from the sample
    val photos (`SAMPLE_VAL`) and train images only from the others, so val
    content is never seen in training.  Image ``i`` of a split depends only
    on (seed, split, i).  Deterministic for a seed, parallel (joblib) for
    larger n, atomic and idempotent like `materialise_samples`; a complete
    ``dest`` made with other parameters is a FileExistsError.
    ``n_jobs``: worker processes (joblib); default 1 for n <= 100, else all
    CPUs.  The output does not depend on it.

    Returns ``{"root", "created", "n", "n_train", "n_val", "seed",
    "val_fraction", "seconds", "images_per_second"}``.
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    kind = "colorize-fcn imagenet-like"
    dest = Path(dest)
    params = {"n": n, "seed": int(seed), "val_fraction": float(val_fraction),
              "version": GENERATOR_VERSION}
    n_val = _n_val(n, val_fraction)
    n_train = n - n_val

    def summary(created: bool, seconds: float) -> dict:
        return {
            "root": str(dest), "created": created, "n": n, "n_train": n_train,
            "n_val": n_val, "seed": int(seed), "val_fraction": float(val_fraction),
            "seconds": round(seconds, 3),
            "images_per_second": round(n / seconds, 1) if created and seconds > 0 else None,
        }

    m = _prepare_dest(dest, kind)
    if m is not None:
        if m.get("params") != params:
            raise FileExistsError(
                errno.EEXIST,
                f"holds an ImageNet-like set made with {m.get('params')}, "
                f"not {params}; delete it or choose another destination",
                str(dest),
            )
        return summary(False, 0.0)

    t0 = time.perf_counter()
    train_sources = tuple(k for k in SAMPLE_PHOTOS if k not in SAMPLE_VAL)
    val_sources = tuple(SAMPLE_VAL)
    tmp = _mkdtemp_next_to(dest)
    try:
        if n_jobs is None:
            import joblib

            n_jobs = 1 if n <= 100 else joblib.cpu_count()
        n_jobs = max(1, int(n_jobs))
        # chunks of <= 250 images, at least ~4 per worker
        chunk = max(1, min(250, -(-n // (4 * n_jobs))))
        tasks = []
        for split, count, sources in (("train", n_train, train_sources),
                                      ("val", n_val, val_sources)):
            for folder in range((count + _FILES_PER_FOLDER - 1) // _FILES_PER_FOLDER):
                (tmp / split / f"{folder:04d}").mkdir(parents=True)
            for start in range(0, count, chunk):
                tasks.append((str(tmp), split, start, min(count, start + chunk),
                              int(seed), sources))
        if n_jobs == 1:
            for t in tasks:
                _make_chunk(*t)
        else:
            from joblib import Parallel, delayed

            Parallel(n_jobs=n_jobs)(delayed(_make_chunk)(*t) for t in tasks)

        lists = {
            "train": [_generated_relpath("train", i) for i in range(n_train)],
            "val": [_generated_relpath("val", i) for i in range(n_val)],
        }
        write_split_lists(tmp, lists)
        check = [lists[s][-1] for s in lists if lists[s]]
        _write_manifest(tmp, {"kind": kind, "params": params,
                              "splits": {k: len(v) for k, v in lists.items()},
                              "check_files": check})
        created = _publish(tmp, dest, kind)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return summary(created, time.perf_counter() - t0)
