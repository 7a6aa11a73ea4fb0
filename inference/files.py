"""Colorize image files, folders and globs: the work behind `colorize-fcn colorize`.

Images are decoded and written in threads while the network runs batches (on
the GPU when present); see inference.images for what happens to each image.
A file that cannot be read is reported and skipped.  Inputs that are (or lie
inside) a training run folder or an evaluation folder are refused: their PNGs
are tiles and report figures, and a `--model work/runs/fcn16s-*` that the shell
expands to several runs would otherwise colorize them.
"""
import glob
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from models.decoders import DECODERS, DEFAULT_DECODER, DEFAULT_TEMPERATURE
from pipeline.atomic import TargetExists, temporary_name
from pipeline.images import is_image_name
from pipeline.regular import NotRegular, check_regular
from pipeline.run_inputs import INPUTS_FILE
from train.runfolder import EARLIER_ATTEMPT

from .api import ImageColorizer
from .images import (DEFAULT_JPEG_QUALITY, FORMATS, load_image, merge_lightness, one_line, recorded_source,
                     save_image, source_record)

_GLOB_CHARS = set("*?[")

# What marks the folders the pipeline writes (tasks.PrepareRun, train.fit, inference.evaluate).
# Every rule takes two or more of their files together, so that an ordinary folder holding one
# common name (done.json, inputs.json, best.pt, metrics.json next to one's photos) is never refused.
_RUN_RECORDS = (INPUTS_FILE, "done.json")            # one of these (PrepareRun's, a finished fit's) ...
_RUN_OUTPUTS = tuple(n for n in EARLIER_ATTEMPT if n not in _RUN_RECORDS)   # ... and one train.fit file
_RUN_CHECKPOINT = ("best.pt", "log.csv")             # or both of these: a run older than inputs.json
_EVAL_FILES = ("metrics.json", "report.html", "auc.png")    # all: <run>/eval-<sig>/ (inference.report)


# ----------------------------------------------------------------------------- inputs
def pipeline_folder_kind(folder: Path):
    """'a training run folder (holds X and Y)', 'an evaluation folder (holds ...)' or None.
    Only files count (a run's tiles/ and tb/ folders are common names)."""
    def has(name):
        return (folder / name).is_file()
    record = next(filter(has, _RUN_RECORDS), None)
    output = record and next(filter(has, _RUN_OUTPUTS), None)
    if output:
        return f"a training run folder (holds {record} and {output})"
    if all(map(has, _RUN_CHECKPOINT)):
        return f"a training run folder (holds {' and '.join(_RUN_CHECKPOINT)})"
    if all(map(has, _EVAL_FILES)):
        return f"an evaluation folder (holds {', '.join(_EVAL_FILES)})"
    return None


def _real(path) -> Path:
    """The absolute path with symbolic links resolved; unlike Path.resolve, never raises (a
    symbolic link loop stays as it is, and is reported when its file is read)."""
    return Path(os.path.realpath(path))


def enclosing_pipeline_folder(path, kind_of=pipeline_folder_kind):
    """(folder, kind) of the outermost run / evaluation folder that is `path` or holds it, or None.
    kind_of: pipeline_folder_kind, or a memoised copy of it for many paths."""
    path = _real(path)
    for folder in reversed([path, *path.parents] if path.is_dir() else list(path.parents)):
        kind = kind_of(folder)
        if kind:
            return folder, kind
    return None


def _folder_images(folder: Path, skip: Path = None):
    """Image files below `folder` (by extension; hidden names ignored), sorted, skipping `skip`.
    Every name but a folder's is kept: one that is no regular file (a symbolic link loop, a
    FIFO) is an error line of collect_inputs and the others go on; none is silently dropped."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not is_image_name(p.name):
            continue
        if skip is not None and (p == skip or skip in p.parents):
            continue
        if not p.is_dir():
            out.append((p, rel))
    return out


def named_input_problem(raw):
    """None for a command-line input that names a folder, a regular file or (with glob
    characters and no such name) a pattern; else why it cannot be used, in words.  Decided
    from one os.stat: nothing is opened (pipeline.regular)."""
    try:
        check_regular(raw)
    except NotRegular as e:
        if os.path.isdir(raw):
            return None
        if e.reason == "missing":
            if os.path.lexists(raw):
                return "a symbolic link to nothing (no such file or folder)"
            return None if _GLOB_CHARS & set(str(raw)) else "no such file or folder"
        return e.detail
    return None


class Inputs(NamedTuple):
    items: list      # [(source, output path)]
    errors: list     # [(input, message)]: reported, the rest go on
    refused: list    # [(input, or run or evaluation folder, message)]: a usage error, nothing may run


def collect_inputs(inputs, out_dir, suffix: str = ".png") -> Inputs:
    """Files, folders (recursively, image extensions only) and glob patterns -> Inputs.

    Outputs are <out_dir>/<name><suffix>: a folder's files keep their path relative to
    it, other files their name; clashing names get a -2, -3, ... suffix.  An input
    whose output would replace it, or a folder that is or lies inside out_dir, is an
    error; inputs in run or evaluation folders are refused, one message per such folder, and
    so is every input that names nothing usable (named_input_problem), one message each."""
    out_dir = Path(out_dir)
    skip = _real(out_dir)
    pairs, errors, refused = [], [], {}

    kind_of = lru_cache(maxsize=None)(pipeline_folder_kind)     # many files share folders

    def refuse_if_pipeline(path) -> bool:
        found = enclosing_pipeline_folder(path, kind_of)
        if found:
            folder, kind = found
            refused.setdefault(folder, f"{kind}, not an input: its images are the pipeline's outputs "
                                       "(did --model match several runs? quote it or pick one)")
        return bool(found)

    for raw in inputs:
        p = Path(raw)
        problem = named_input_problem(p)
        if problem:
            refused.setdefault(str(raw), problem)
        elif p.is_dir():
            if refuse_if_pipeline(p):
                continue
            folder = _real(p)
            if folder == skip or skip in folder.parents:
                errors.append((raw, "is the output folder (or inside it); its images are not inputs "
                                    "-- choose another --out"))
                continue
            found = _folder_images(folder, skip)
            if not found:
                errors.append((raw, "folder holds no image files"))
            pairs += [(src, rel) for src, rel in found]
        elif p.exists():
            pairs.append((p, Path(p.name)))
        else:
            matches = [Path(m) for m in sorted(glob.glob(str(raw), recursive=True))]
            files = [m for m in matches if not m.is_dir()]     # as _folder_images: none dropped
            refused_dirs = [m for m in matches if m.is_dir() and refuse_if_pipeline(m)]
            if not files and not refused_dirs:
                refused.setdefault(str(raw), "no file matches this pattern")
            pairs += [(f, Path(f.name)) for f in files]
    items, used, seen = [], set(), set()
    for src, rel in pairs:
        key = _real(src)
        if key in seen or refuse_if_pipeline(key):
            continue
        seen.add(key)
        try:
            check_regular(src)                       # a link loop or FIFO in a folder: its line, now
        except NotRegular as e:
            errors.append((str(src), e.detail))
            continue
        dst = out_dir / rel.with_suffix(suffix)
        n = 2
        while dst in used:
            dst = out_dir / rel.with_name(f"{rel.stem}-{n}{suffix}")
            n += 1
        used.add(dst)
        if _real(dst) == key:
            errors.append((str(src), f"its output {dst} would replace it; choose another --out"))
            continue
        items.append((Path(src), dst))
    return Inputs(items, errors, [(str(f), msg) for f, msg in refused.items()])


EARLIER_VERSION = "was made from an earlier version of"     # output_mismatch: --redo-changed redoes these


def output_mismatch(src, dst):
    """None when the existing output `dst` records that it was made from `src` as it is now
    (so --skip-existing may keep it), else why not, in words.  Raises OSError when `src`
    cannot be stat'ed."""
    want, got = source_record(src), recorded_source(dst)
    if got == want:
        return None
    if got is None:
        return "records no input (not written by this colorize-fcn, or edited since)"
    if got.split()[0] == want.split()[0]:
        return f"{EARLIER_VERSION} {src}"
    return "was made from another input (output names depend on the whole input set: clashing names get -2, -3, ...)"


def check_out_folder(out_dir) -> None:
    """Create `out_dir` and write (and remove) a temporary file in it, so that an unwritable
    --out fails before any work; raises OSError with a one-line message."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OSError(f"{out_dir} is not a folder") from None
    except OSError as e:
        raise OSError(f"cannot create {out_dir}: {e.strerror or one_line(e)}") from None
    probe = temporary_name(out_dir / "probe")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as e:
        raise OSError(f"cannot write in {out_dir}: {e.strerror or one_line(e)}") from None


# ----------------------------------------------------------------------------- the loop
def colorize_items(model: ImageColorizer, items, decoder=DEFAULT_DECODER, temperature=DEFAULT_TEMPERATURE,
                   batch_size: int = 8, threads: int = 4, on_done=None, on_error=None, size: int = None,
                   fmt: str = "png", quality: int = DEFAULT_JPEG_QUALITY, replace: bool = True) -> dict:
    """Colorize [(source, output file)]; returns {"ok": n, "failed": [(source, message)],
    "alpha_dropped": n}.

    size: the network input's side (default the colorizer's im_size); fmt: 'png' (keeps an
    input's alpha channel) or 'jpg' (`quality`; an input's alpha is composited on white and
    counted in alpha_dropped).  Images of the next batch are decoded (threads) while the
    current one runs on the network; outputs are merged and written in threads too.  Each
    output records its input (inference.images.source_record, taken before the input is read).
    replace=False: an output file that exists, or appears while this runs (another process
    writing to the same folder), is never replaced but failed.
    on_done(src, dst) and on_error(src, message) are called once per item, and on a
    KeyboardInterrupt, which is re-raised, for every output written until then."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}")
    if not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose from {sorted(FORMATS)}")
    batch_size = max(1, int(batch_size))
    size = int(size or model.im_size)
    keep_alpha = fmt == "png"
    failed, ok, alpha_dropped = [], 0, 0

    def fail(src, msg):
        failed.append((src, msg))
        if on_error:
            on_error(src, msg)

    def load(src):
        """-> (source record, LoadedImage); the record first: an input changed while it is read
        gets an output that records its older version."""
        try:
            record = source_record(src)
        except OSError:
            record = None                            # load_image says what is wrong with it
        return record, load_image(src, size, keep_alpha)

    def finish(src, dst, record, img, ab):
        """-> (src, dst, None) or (src, dst, error message)."""
        try:
            save_image(dst, merge_lightness(img.L_full, ab), img.alpha, fmt, quality, source=record,
                       replace=replace)
        except TargetExists:
            return src, dst, (f"{dst} appeared while this command ran (another colorize writing to the "
                              f"same folder?); not replaced")
        except Exception as e:
            msg = (isinstance(e, OSError) and e.strerror) or one_line(e)
            # pipeline.atomic's OSError names dst already: "cannot write <dst>: <reason>"
            return src, dst, msg if str(dst) in msg else f"cannot write {dst}: {msg}"
        return src, dst, None

    collected = set()

    def collect(fut) -> int:
        """on_done / on_error for a finished write, once per future (an interrupt may land
        between a collect and the next; the except below collects whatever is left)."""
        if fut in collected:
            return 0
        src, dst, err = fut.result()
        collected.add(fut)
        if err:
            fail(src, err)
            return 0
        if on_done:
            on_done(src, dst)
        return 1

    chunks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        def submit(chunk):
            return [pool.submit(load, src) for src, _ in chunk]
        loading = submit(chunks[0]) if chunks else []
        writing = []
        try:
            for ci, chunk in enumerate(chunks):
                current, loading = loading, (submit(chunks[ci + 1]) if ci + 1 < len(chunks) else [])
                good = []
                for (src, dst), fut in zip(chunk, current):
                    try:
                        good.append((src, dst, fut.result()))
                    except Exception as e:               # one bad file never stops the rest
                        fail(src, one_line(e))
                if good:
                    ab = model.predict_ab([g[2][1].L_small for g in good], decoder, temperature)
                    for i, (src, dst, (record, img)) in enumerate(good):
                        alpha_dropped += img.had_alpha and img.alpha is None
                        writing.append(pool.submit(finish, src, dst, record, img, ab[i]))
                # keep at most about one batch of outputs in flight
                while len(writing) > batch_size:
                    ok += collect(writing[0])    # then dropped: an interrupt while waiting keeps it
                    del writing[0]
            for fut in writing:          # the last batch: an interrupt while waiting here too
                ok += collect(fut)       # must count what its threads go on to write
        except KeyboardInterrupt:    # Ctrl-C: no more reading; the outputs computed are written
            for fut in loading:
                fut.cancel()
            pool.shutdown(wait=True)
            for fut in writing:
                collect(fut)             # on_done / on_error: the caller counts what was written
            raise
    return {"ok": ok, "failed": failed, "alpha_dropped": alpha_dropped}


def print_error(src, msg, stream=None):
    (stream or sys.stderr).write(f"colorize-fcn: error: {src}: {msg}\n")
