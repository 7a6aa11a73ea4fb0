"""Colorize image files, folders and globs: the work behind `colorize-fcn colorize`.

Images are decoded and written in threads while the network runs batches (on
the GPU when present); see inference.images for what happens to each image.
A file that cannot be read is reported and skipped.
"""
import glob
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from models.decoders import DECODERS, DEFAULT_DECODER, DEFAULT_TEMPERATURE
from pipeline.images import is_image_name

from .api import ImageColorizer
from .images import load_image, merge_lightness, one_line, save_png

_GLOB_CHARS = set("*?[")


# ----------------------------------------------------------------------------- inputs
def _folder_images(folder: Path, skip: Path = None):
    """Image files below `folder` (by extension; hidden names ignored), sorted, skipping `skip`."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not is_image_name(p.name):
            continue
        if skip is not None and (p == skip or skip in p.parents):
            continue
        if p.is_file():
            out.append((p, rel))
    return out


def collect_inputs(inputs, out_dir):
    """Files, folders (recursively, image extensions only) and glob patterns ->
    ([(source, output path)], [(input, error message)]).

    Outputs are PNGs under out_dir: a folder's files keep their path relative to
    it, other files their name; clashing names get a -2, -3, ... suffix."""
    out_dir = Path(out_dir)
    skip = out_dir.resolve()
    pairs, errors = [], []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = _folder_images(p.resolve(), skip)
            if not found:
                errors.append((raw, "folder holds no image files"))
            pairs += [(src, rel) for src, rel in found]
        elif p.exists() or not (_GLOB_CHARS & set(str(raw))):
            pairs.append((p, Path(p.name)))          # a missing file is reported when it is read
        else:
            matches = sorted(glob.glob(str(raw), recursive=True))
            files = [Path(m) for m in matches if Path(m).is_file()]
            if not files:
                errors.append((raw, "no file matches this pattern"))
            pairs += [(f, Path(f.name)) for f in files]
    items, used, seen = [], set(), set()
    for src, rel in pairs:
        key = Path(src).resolve()
        if key in seen:
            continue
        seen.add(key)
        dst = out_dir / rel.with_suffix(".png")
        n = 2
        while dst in used:
            dst = out_dir / rel.with_name(f"{rel.stem}-{n}.png")
            n += 1
        used.add(dst)
        items.append((Path(src), dst))
    return items, errors


# ----------------------------------------------------------------------------- the loop
def colorize_items(model: ImageColorizer, items, decoder=DEFAULT_DECODER, temperature=DEFAULT_TEMPERATURE,
                   batch_size: int = 8, threads: int = 4, on_done=None, on_error=None) -> dict:
    """Colorize [(source, output png)]; returns {"ok": n, "failed": [(source, message)]}.

    Images of the next batch are decoded (threads) while the current one runs on the
    network; outputs are merged and written in threads too.  on_done(src, dst) and
    on_error(src, message) are called once per item."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}")
    if not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    batch_size = max(1, int(batch_size))
    failed, ok = [], 0

    def fail(src, msg):
        failed.append((src, msg))
        if on_error:
            on_error(src, msg)

    def finish(src, dst, L_full, ab):
        """-> (src, dst, None) or (src, dst, error message)."""
        try:
            save_png(dst, merge_lightness(L_full, ab))
        except Exception as e:
            return src, dst, f"cannot write {dst}: {one_line(e)}"
        return src, dst, None

    def collect(fut) -> int:
        src, dst, err = fut.result()
        if err:
            fail(src, err)
            return 0
        if on_done:
            on_done(src, dst)
        return 1

    chunks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        def submit(chunk):
            return [pool.submit(load_image, src, model.im_size) for src, _ in chunk]
        loading = submit(chunks[0]) if chunks else []
        writing = []
        for ci, chunk in enumerate(chunks):
            current, loading = loading, (submit(chunks[ci + 1]) if ci + 1 < len(chunks) else [])
            good = []
            for (src, dst), fut in zip(chunk, current):
                try:
                    good.append((src, dst, fut.result()))
                except Exception as e:               # one bad file never stops the rest
                    fail(src, one_line(e))
            if good:
                ab = model.predict_ab([g[2].L_small for g in good], decoder, temperature)
                for i, (src, dst, img) in enumerate(good):
                    writing.append(pool.submit(finish, src, dst, img.L_full, ab[i]))
            # keep at most about one batch of outputs in flight
            while len(writing) > batch_size:
                ok += collect(writing.pop(0))
        for fut in writing:
            ok += collect(fut)
    return {"ok": ok, "failed": failed}


def print_error(src, msg, stream=None):
    (stream or sys.stderr).write(f"colorize-fcn: error: {src}: {msg}\n")
