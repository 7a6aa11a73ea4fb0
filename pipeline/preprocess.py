"""The work behind the preprocessing tasks: Lab shards, pixel sampling, label shards.

Each function reads and writes plain files so it can be tested without Luigi;
`on_image(i, n)` callbacks let the task report progress.
"""
import heapq
from pathlib import Path

import numpy as np

from .color import ab_to_hue_chroma, lab_planes
from .fingerprint import check_mode, file_fingerprint
from .images import SkipImage, load_rgb_with_size
from .labels import SUM_BLOCK, block_sums, target_posteriors
from .plan import sample_key
from .shards import (L_SCALE, LAB_COMPRESSION, LAB_LAYOUT, check_ab, check_ab_sums, decode_L, decode_ab, read_array,
                     read_attrs, read_rows, write_shard)

# Images per posterior computation: bounds memory at ~10 MB for 256 px.  64 (~40 MB) took
# 6 % more CPU per image here: fresh pages for its 33 MB float32 batch every time.
LABEL_BATCH = 16


def build_lab_shard(root, relpaths, im_size: int, out_path, sig: str = "", on_image=None,
                    compression=LAB_COMPRESSION, fingerprint: str = "stat") -> dict:
    """Decode, resize and convert `relpaths` to Lab; write one shard; return its summary.

    Unusable files are recorded with a reason in the shard's `skipped` attribute
    and counted; they are never replaced by another file.  `compression`: the a/b planes',
    see pipeline.shards.COMPRESSION (a storage choice: the arrays read back the same).
    Each kept image's fingerprint (mode `fingerprint`, as the plan used; taken after
    decoding, uncached) is stored beside it, a record of which version was read.
    """
    check_mode(fingerprint)
    root = Path(root)
    n = len(relpaths)
    L = np.empty((n, im_size, im_size), np.uint8)                 # see shards.LAB_LAYOUT
    ab = np.empty((n, 2, im_size, im_size), np.int8)
    kept, sizes, fps, skipped = [], [], [], []
    for i, rp in enumerate(relpaths):
        try:
            rgb, size = load_rgb_with_size(root / rp, im_size)
        except SkipImage as e:
            skipped.append([rp, e.reason, e.detail])
        else:
            lab_planes(rgb, L[len(kept)], ab[len(kept)], L_scale=L_SCALE)
            kept.append(rp)
            sizes.append(size)
            fps.append(file_fingerprint(root / rp, fingerprint))
        if on_image:
            on_image(i + 1, n)
    m = len(kept)
    summary = {"n_images": m, "n_skipped": len(skipped), "skipped": skipped}
    arrays = {"L": L[:m], "ab": ab[:m], "paths": kept, "fingerprints": fps,
              "sizes": np.asarray(sizes, np.int32).reshape(m, 2)}
    attrs = {"kind": "lab", "signature": sig, "im_size": im_size, "lab_layout": LAB_LAYOUT, **summary}
    if im_size % SUM_BLOCK == 0:                                  # for the label stage (labels.SUM_BLOCK)
        arrays["ab_sums"] = block_sums(ab[:m], SUM_BLOCK, np.int16)
        attrs["ab_sums_block"] = SUM_BLOCK
    write_shard(out_path, arrays, attrs,
                compression={"ab": compression})                  # L raw: the loader reads it per sample
    return summary


def _choose_images(counts, n_images: int, rng):
    """Pick up to n_images (shard, index) pairs uniformly from shards with `counts` images."""
    total = int(sum(counts))
    flat = rng.choice(total, size=min(n_images, total), replace=False) if total else np.array([], int)
    starts = np.cumsum([0] + list(counts))
    shard = np.searchsorted(starts, flat, side="right") - 1
    return sorted(zip(shard.tolist(), (flat - starts[shard]).tolist()))


def _image_counts(shard_paths) -> list:
    return [read_attrs(p)["n_images"] for p in shard_paths]


def sample_pixels(shard_paths, counts, name: str, n_images: int, per_image: int, seed: int) -> np.ndarray:
    """Random pixels of array `name` ('L' or 'ab') from up to n_images images of shards
    holding `counts` images each.

    Returns (P, C) float32, C = 1 for L, 2 for ab.  Deterministic for a seed.
    """
    rng = np.random.default_rng(seed)
    out = []
    by_shard = {}
    for s, i in _choose_images(counts, n_images, rng):            # sorted by shard, then image
        by_shard.setdefault(s, []).append(i)
    for s, rows in by_shard.items():
        for img in read_rows(shard_paths[s], name, rows):         # each shard opened once
            img = decode_L(img) if name == "L" else decode_ab(img)  # (S,S) or (2,S,S)
            img = img.reshape(-1, img.shape[-2] * img.shape[-1])   # (C, S*S)
            pick = rng.choice(img.shape[1], size=min(per_image, img.shape[1]), replace=False)
            out.append(img[:, pick].T)
    if not out:
        raise ValueError("no images to sample pixels from: every training image was skipped")
    return np.concatenate(out)


def gmm_features(shard_paths, n_images: int, per_image: int, per_image_few: int, seed: int, only=None):
    """(P, 2) hue/chroma features sampled as the original did: n_images x per_image
    pixels, or per_image_few pixels per image when fewer than 100 images are sampled.

    The result depends on the sampled images alone, so a GMM refit on a grown dataset
    is the same fit unless the sample changed: the images are the n_images of smallest
    pipeline.plan.sample_key among those in the shards (and in the set `only`, if given:
    FitGMM passes the sample it signed), each image's pixels come from a generator seeded
    by its key, and features are in key order.
    """
    chosen = heapq.nsmallest(n_images, _sample_candidates(shard_paths, seed, only))   # (key, shard, row)
    per = per_image_few if len(chosen) < 100 else per_image
    rows = {}
    for key, s, row in chosen:
        rows.setdefault(s, []).append((row, key))
    pixels = {}                                                    # key -> (per, 2) ab
    for s, items in rows.items():
        images = read_rows(shard_paths[s], "ab", [row for row, _ in items])   # each shard opened once
        for (_, key), img in zip(items, images):
            ab = decode_ab(img).reshape(2, -1)                     # (2, S*S)
            pick = np.random.default_rng([seed, key]).choice(ab.shape[1], size=min(per, ab.shape[1]),
                                                             replace=False)
            pixels[key] = ab[:, pick].T
    if not pixels:
        raise ValueError("no images to sample pixels from: every training image was skipped")
    ab = np.concatenate([pixels[key] for key, _, _ in chosen])
    return ab_to_hue_chroma(ab[:, 0], ab[:, 1])


def _sample_candidates(shard_paths, seed: int, only):
    """(sample_key, shard index, row) of every image in the shards (only those in `only`, if given)."""
    for s, path in enumerate(shard_paths):
        for row, rp in enumerate(read_array(path, "paths")):
            if only is None or rp in only:
                yield sample_key(str(rp), seed), s, row


def mean_lightness(shard_paths, n_pixels: int, seed: int = 0) -> float:
    """Mean L over n_pixels sampled from (up to) 1000 images."""
    counts = _image_counts(shard_paths)
    n_images = min(1000, int(sum(counts)))
    per = max(1, -(-n_pixels // max(n_images, 1)))
    return float(sample_pixels(shard_paths, counts, "L", n_images, per, seed).mean())


def build_label_shard(lab_path, gmm: dict, lowpass: int, out_path, sig: str = "", on_image=None) -> dict:
    """Posteriors of every image of a Lab shard at the target resolution; float16
    (max error 2^-12 ~ 2.4e-4 on values in [0, 1]).  Works on batches of LABEL_BATCH
    images: one low-pass and one posterior evaluation per batch.  Reads the shard's a/b block
    sums (ab_sums) when it has them and `lowpass` is a multiple of their block, else its a/b:
    the same labels either way (labels.SUM_BLOCK).

    Values below 2^-14 (float16's smallest normal number) are stored as 0: an error
    below the encoding's own bound, and numpy casts subnormal float16 values in a
    slow path (~9x slower; about half of all posteriors are that small)."""
    attrs = read_attrs(lab_path)
    n, size, k = attrs["n_images"], attrs["im_size"], len(gmm["weights"])
    summed = attrs.get("ab_sums_block", 1)
    summed = summed if lowpass % summed == 0 else 1
    s = size // lowpass
    post = np.empty((n, k, s, s), np.float16)
    for i in range(0, n, LABEL_BATCH):
        j = min(n, i + LABEL_BATCH)
        ab = (check_ab(read_array(lab_path, "ab", slice(i, j))) if summed == 1     # (B, 2, S, S) int8
              else check_ab_sums(read_array(lab_path, "ab_sums", slice(i, j))))    # (B, 2, S/8, S/8) int16
        p = target_posteriors(ab, gmm, lowpass, summed=summed)          # (B, K, s, s) float32
        np.copyto(p, np.float32(0), where=p < np.float32(2 ** -14))
        post[i:j] = p
        if on_image:
            on_image(j, n)
    paths = list(read_array(lab_path, "paths")) if n else []
    write_shard(out_path, {"posteriors": post, "paths": paths},
                {"kind": "labels", "signature": sig, "n_images": n, "n_clusters": k,
                 "img_lowpass": lowpass, "lab_signature": attrs.get("signature", "")})
    return {"n_images": n}
