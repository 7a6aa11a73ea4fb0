"""The colour photos bundled with scikit-image and scikit-learn, as a dataset.

`materialise_samples` writes them as PNGs plus split lists (no download
needed).  It builds into a hidden temporary folder next to the destination
and renames it into place, so a destination that exists is complete.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from .published import complete_folder, mkdtemp_next_to, prepare_folder, publish_folder, write_folder_manifest
from .splits import write_split_lists


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

    m = prepare_folder(dest, kind)
    if m is not None:
        return summary(False, m)

    tmp = mkdtemp_next_to(dest)
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
        write_folder_manifest(tmp, manifest)
        created = publish_folder(tmp, dest, kind)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return summary(created, manifest if created else complete_folder(dest, kind))
