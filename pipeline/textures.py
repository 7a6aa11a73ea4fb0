"""A generated data set in which colour follows from what the lightness shows.

Each image is a random layout (a Voronoi partition into a few regions) of textures drawn in
lightness; every texture has its own hue and chroma, and each region's mean lightness and
contrast are drawn independently of its texture, so brightness alone says nothing about colour:
a model beats the gray baseline on images it never saw only by recognising textures.  The
held-out split ('val') has new layouts (other seeds), never an image of 'train'.

    python -m pipeline.textures DEST [--train N] [--val N] [--size S] [--seed S]
    luigi --module tasks TextureDataset --dest data/textures

Like the bundled samples the folder is built into a hidden temporary folder and renamed into
place, so a destination that exists is complete.  bench/learn.py trains on it.
"""
from __future__ import annotations

import argparse
import errno
import shutil
import sys
from pathlib import Path

import numpy as np

from .color import lab_to_rgb
from .published import mkdtemp_next_to, prepare_folder, publish_folder, write_folder_manifest
from .splits import write_split_lists

GENERATOR_VERSION = 2
KIND = "colorize-fcn textures"

#: name -> (hue in degrees of the a/b plane, chroma in CIELab units).  Hues 60-90 degrees
#: apart; chroma low enough that most lightness values stay inside the sRGB gamut.
TEXTURES = {
    "fine_stripes": (30.0, 42.0),       # horizontal-ish, period ~4 px: red
    "coarse_stripes": (140.0, 38.0),    # diagonal, period ~10 px: green
    "dots": (270.0, 40.0),              # a grid of round dots: blue
    "grain": (85.0, 45.0),              # fine noise: yellow
    "gradient": (200.0, 32.0),          # a smooth ramp, no texture at all: cyan
}
REGIONS = (2, 3)                        # regions per image, inclusive range


def _pattern(name: str, size: int, rng) -> np.ndarray:
    """(size, size) float pattern of texture `name`, roughly in [-1, 1], random phase,
    orientation and scale within the texture's own range (so a texture is a family, not one
    picture)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    if name in ("fine_stripes", "coarse_stripes"):
        period, angle = (rng.uniform(3.5, 4.5), rng.uniform(-15, 15)) if name == "fine_stripes" \
            else (rng.uniform(9, 11), rng.uniform(35, 55))
        t = np.radians(angle)
        return np.sign(np.sin(2 * np.pi * (x * np.sin(t) + y * np.cos(t)) / period + rng.uniform(0, 2 * np.pi)))
    if name == "dots":
        period = rng.uniform(6, 8)
        dx, dy = (x + rng.uniform(0, period)) % period - period / 2, (y + rng.uniform(0, period)) % period - period / 2
        return np.where(np.hypot(dx, dy) < period * 0.28, 1.0, -1.0)
    if name == "grain":
        return np.clip(rng.normal(0, 0.6, (size, size)), -1, 1)
    t = rng.uniform(0, 2 * np.pi)                                     # gradient: a ramp across the image
    ramp = x * np.cos(t) + y * np.sin(t)
    return 2 * (ramp - ramp.min()) / max(np.ptp(ramp), 1e-9) - 1


def texture_image(size: int, rng) -> tuple:
    """(RGB uint8 (size, size, 3), label map (size, size) of texture indices) of one random layout."""
    names = list(TEXTURES)
    n = int(rng.integers(REGIONS[0], REGIONS[1] + 1))
    seeds = rng.uniform(0, size, (n, 2))
    y, x = np.mgrid[0:size, 0:size]
    region = np.argmin((y[..., None] - seeds[:, 0]) ** 2 + (x[..., None] - seeds[:, 1]) ** 2, axis=-1)
    kinds = rng.choice(len(names), n, replace=n > len(names))
    lab = np.zeros((size, size, 3))
    for r in range(n):
        name = names[kinds[r]]
        mask = region == r
        mean, amp = rng.uniform(42, 68), rng.uniform(12, 22)          # lightness says nothing of the texture
        hue, chroma = TEXTURES[name]
        h = np.radians(hue + rng.uniform(-6, 6))
        c = chroma * rng.uniform(0.85, 1.15)
        pattern = _pattern(name, size, rng)[mask]
        lab[mask, 0] = mean + amp * (pattern - pattern.mean())       # zero mean: dots are not darker
        lab[mask, 1], lab[mask, 2] = c * np.cos(h), c * np.sin(h)
    return lab_to_rgb(lab), kinds[region]


def _relpath(split: str, i: int) -> str:
    return f"{split}/{split}_{i:05d}.png"


def generate_textures(dest, n_train: int = 400, n_val: int = 100, size: int = 64, seed: int = 0) -> dict:
    """Write n_train + n_val PNGs of `size` px (texture_image) and files_train/val.txt into dest.
    Image i of a split depends only on (seed, split, i); val images use other seeds than train
    ones (new layouts).  Idempotent: a complete dest made with the same parameters is kept, one
    made with others is a FileExistsError.  Returns {"root", "created", "n_train", "n_val", "size"}."""
    from PIL import Image
    if n_train < 1 or n_val < 1 or size < 16:
        raise ValueError(f"need n_train >= 1, n_val >= 1 and size >= 16, got {n_train}, {n_val}, {size}")
    dest = Path(dest)
    params = {"n_train": int(n_train), "n_val": int(n_val), "size": int(size), "seed": int(seed),
              "version": GENERATOR_VERSION}
    summary = {"root": str(dest), "n_train": n_train, "n_val": n_val, "size": size}
    m = prepare_folder(dest, KIND)
    if m is not None:
        if m.get("params") != params:
            raise FileExistsError(errno.EEXIST, f"holds a texture set made with {m.get('params')}, not {params}; "
                                                f"delete it or choose another destination", str(dest))
        return {**summary, "created": False}
    tmp = mkdtemp_next_to(dest)
    try:
        lists = {}
        for split, count, code in (("train", n_train, 0), ("val", n_val, 1)):
            (tmp / split).mkdir()
            lists[split] = [_relpath(split, i) for i in range(count)]
            for i, rel in enumerate(lists[split]):
                rgb, _ = texture_image(size, np.random.default_rng([seed, code, i]))
                Image.fromarray(rgb).save(tmp / rel, "PNG", compress_level=1)
        write_split_lists(tmp, lists)
        write_folder_manifest(tmp, {"kind": KIND, "params": params, "splits": {k: len(v) for k, v in lists.items()},
                                    "check_files": [lists["train"][-1], lists["val"][-1]]})
        created = publish_folder(tmp, dest, KIND)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {**summary, "created": created}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.textures", description=__doc__.split("\n\n")[0])
    p.add_argument("dest")
    p.add_argument("--train", type=int, default=400)
    p.add_argument("--val", type=int, default=100)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        print(generate_textures(a.dest, a.train, a.val, a.size, a.seed))
    except (ValueError, OSError) as e:
        sys.stderr.write(f"textures: error: {e}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
