"""Dataset splits: a root folder of images plus split lists.

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

Every image of a folder
-----------------------
The split ``all`` (`ALL_SPLIT`) of any root lists every image file below it,
sorted (the plain-folder scan, whatever list files the root holds), unless
the root has its own ``files_all.txt``.  It is how a folder of test photos is
scored (``Evaluate --images DIR``): the folder is a dataset whose one split
holds every image in it.

Sample data
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import re
import unicodedata
from pathlib import Path, PureWindowsPath
from typing import Iterable, Mapping

from .atomic import write_text_atomic
from .images import IMAGE_EXTENSIONS, is_image_name

PLAIN_SPLITS = ("train", "val", "small")
ALL_SPLIT = "all"        # every image file below the root (module docstring)
PLAIN_SMALL_SIZE = 100   # images in a plain folder's 'small' split (a subset of val)
PLAIN_VAL_FRACTION = 0.1

LIST_PREFIX = "files_"
LIST_SUFFIX = ".txt"
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_-]+$")


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


def _iter_plain_images(root: Path) -> Iterable[str]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            if is_image_name(name):
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
    if split == ALL_SPLIT and split not in lists:
        return sorted(_iter_plain_images(root))
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


def list_nonempty_split(root: str | os.PathLike, split: str) -> list[str]:
    """`list_split`, but a split without files is a ValueError naming its list file (or
    the plain folder): a pipeline stage cannot train, fit or validate on nothing."""
    files = list_split(root, split)
    if not files:
        lists = _split_lists(Path(root))
        where = lists[split] if split in lists else f"image folder {root}"
        raise ValueError(f"split {split!r} is empty: {where} lists no images")
    return files



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
        write_text_atomic(list_file(root, split), text)
