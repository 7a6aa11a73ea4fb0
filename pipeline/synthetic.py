"""An ImageNet-like JPEG dataset of any size, generated from the bundled photos.

`generate_imagenet_like` crops, rescales and colour-jitters the sample photos
(pipeline.samples) into JPEGs with ImageNet's size and aspect statistics, plus
split lists.  Like the samples it builds into a hidden temporary folder and
renames it into place, so a destination that exists is complete.
"""
from __future__ import annotations

import errno
import io
import os
import shutil
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from .published import mkdtemp_next_to, prepare_folder, publish_folder, write_folder_manifest
from .samples import SAMPLE_PHOTOS, SAMPLE_VAL, load_sample_photo
from .splits import write_split_lists

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

    m = prepare_folder(dest, kind)
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
    tmp = mkdtemp_next_to(dest)
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
        write_folder_manifest(tmp, {"kind": kind, "params": params,
                              "splits": {k: len(v) for k, v in lists.items()},
                              "check_files": check})
        created = publish_folder(tmp, dest, kind)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return summary(created, time.perf_counter() - t0)
