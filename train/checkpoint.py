"""Checkpoints that load with torch.load(weights_only=True), and a run's resume point.

A checkpoint is a dict of tensors and plain Python values only (no numpy
arrays, no pickled classes), so loading one can never run code (train.rng keeps
the RNG states in that form).  Files are written through pipeline.atomic.atomic_path
(temporary file, fsync, rename): a crash or a full disk mid-save leaves the previous
checkpoint intact.

A run keeps its last two resume checkpoints: save_checkpoint(..., keep_previous=True)
renames checkpoint.pt to checkpoint.prev.pt just before the new one takes its name, so at
every moment at least one complete checkpoint exists (between the two renames only the
previous one).  latest_checkpoint() resumes from checkpoint.pt, or from checkpoint.prev.pt
when checkpoint.pt is missing or unreadable (truncated by a crash or a full disk,
overwritten, ...), and says so in one line.
"""
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import torch

from pipeline.atomic import atomic_path
from pipeline.progress import say

RESUME_KEYS = ("state_dict", "optimizer", "iteration")     # what makes a file a resume point


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used, or a run folder with no usable one.
    reason: what is wrong, in one line that does not name the file ('' when not given)."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


def previous_path(path) -> Path:
    """checkpoint.pt -> checkpoint.prev.pt"""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path, payload: dict, keep_previous: bool = False) -> None:
    """Atomically torch.save `payload` to `path`, on disk (fsync) before it takes the name.
    keep_previous: the file it replaces becomes previous_path(path)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            torch.save(payload, tmp)
        except RuntimeError as e:        # torch's writer reports a full disk as "unexpected pos ..."
            raise OSError(None, f"torch.save failed ({_reason(e)}; a full disk?)") from None
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)                 # the bytes first: a power cut never leaves a short file
        finally:
            os.close(fd)
        if keep_previous and path.exists():
            _keep_as_previous(path)


def _keep_as_previous(path: Path) -> None:
    """previous_path(path) becomes the file at `path`, which keeps its name until the new one
    replaces it: at no moment is there no `path` (a reader, or a kill, between two renames
    found none).  A hard link, where the filesystem has them; else a rename."""
    try:
        with atomic_path(previous_path(path)) as tmp:
            os.link(path, tmp)
    except OSError:                      # no hard links here (some network or FAT filesystems)
        os.replace(path, previous_path(path))


def _reason(e: Exception) -> str:
    return " ".join(str(e).split())[:200]


_ZIP_MAGIC = b"PK\x03\x04"          # torch.save writes a zip archive (<name>/data.pkl + tensors)
_PICKLE_MAGIC = b"\x80"              # a pickle stream (protocol >= 2): torch.save's legacy format
CORRUPT = "truncated or corrupt checkpoint"     # a CheckpointError.reason; callers add their own advice


def _why_unloadable(path, e: Exception) -> str:
    """One line saying why torch.load(weights_only=True) failed on `path`, from the file's own
    bytes: torch's messages are long, cut off mid-sentence, or advise an unsafe load."""
    if isinstance(e, OSError):
        return f"cannot read it ({e.strerror or _reason(e)})"
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_ZIP_MAGIC))
    except OSError as err:
        return f"cannot read it ({err.strerror or _reason(err)})"
    if not head:
        return "empty file (0 bytes), not a PyTorch checkpoint"
    if head == _ZIP_MAGIC:
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):           # no central directory: cut short
            return CORRUPT
        if not any(n.endswith("/data.pkl") for n in names):
            return "a zip file, not a PyTorch checkpoint"
        if isinstance(e, pickle.UnpicklingError):
            return ("a PyTorch file holding more than tensors and plain values: refused, as loading it "
                    "could run code (a colorize-fcn checkpoint holds only those)")
        return CORRUPT
    if head.startswith(_PICKLE_MAGIC):
        return ("a pickle file, not a weights-only PyTorch checkpoint: refused, as loading it could run code "
                "(a colorize-fcn checkpoint holds only tensors and plain values)")
    return "not a PyTorch checkpoint (not a zip/pickle file)"


def load_checkpoint(path, map_location="cpu") -> dict:
    """torch.load with weights_only=True; errors (CheckpointError, a RuntimeError) name the file
    and say in plain words what is wrong with it (CheckpointError.reason, without the file)."""
    try:
        with warnings.catch_warnings():      # torch notes a pickle protocol it did not write, then fails
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the path and a plain reason
        reason = _why_unloadable(path, e)
        raise CheckpointError(f"cannot load checkpoint {path}: {reason}", reason) from e


def _load_resume_point(path, check=None) -> dict:
    ckpt = load_checkpoint(path)
    missing = [k for k in RESUME_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a resume checkpoint (no {', '.join(missing)})")
    reason = check(ckpt) if check is not None else None
    if reason:
        raise CheckpointError(f"cannot load checkpoint {path}: {reason}", reason)
    return ckpt


def _shape(value):
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def shape_problem(ckpt, model_shapes: dict, param_shapes: list):
    """Why the tensors of resume checkpoint `ckpt` cannot be the model's (one line), or None.
    model_shapes: {state_dict name: shape}; param_shapes: the optimiser's parameters' shapes,
    in order (its per-parameter state, e.g. Adam's averages, has the parameter's shape)."""
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or set(state) != set(model_shapes):
        return "its state_dict does not hold the model's tensors"
    for name, shape in model_shapes.items():
        if _shape(state[name]) != tuple(shape):
            return f"tensor {name} has shape {_shape(state[name])}, the model's is {tuple(shape)}"
    per_param = ckpt["optimizer"].get("state", {}) if isinstance(ckpt["optimizer"], dict) else None
    if not isinstance(per_param, dict):
        return "its optimiser state is not a dict"
    for index, values in per_param.items():
        if not (isinstance(index, int) and 0 <= index < len(param_shapes)) or not isinstance(values, dict):
            return f"its optimiser state has no parameter {index!r}"
        for key, value in values.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and _shape(value) != tuple(param_shapes[index]):
                return (f"optimiser state {key} of parameter {index} has shape {_shape(value)}, "
                        f"the parameter's is {tuple(param_shapes[index])}")
    return None


def latest_checkpoint(path, log=say, check=None):
    """(checkpoint dict, the file it came from) of the newest usable resume point among
    `path` and previous_path(path); (None, None) when neither file exists.  check(ckpt): why
    a loaded checkpoint cannot be used (e.g. shape_problem), or None.  Falling back to
    the previous file is logged in one line, and an unreadable `path` is then deleted (else
    the next save would rotate it into the previous file's place); when files exist but none is readable, a
    one-line CheckpointError says which to delete (the run then restarts from iteration 0:
    its old log, tiles, tb/ and best.pt are removed, see train.fit)."""
    path = Path(path)
    candidates = [p for p in (path, previous_path(path)) if p.exists()]
    failures = []
    for p in candidates:
        try:
            ckpt = _load_resume_point(p, check)
        except CheckpointError as e:
            failures.append(e)
            continue
        if failures:               # so that the next save does not rotate it into p's place
            path.unlink(missing_ok=True)
            log(f"{failures[0]}; removed it, resuming from {p.name} (iteration {ckpt['iteration']})")
        elif p != path:
            log(f"{path} is missing; resuming from {p.name} (iteration {ckpt['iteration']})")
        return ckpt, p
    if failures:
        names = " and ".join(str(p) for p in candidates)
        raise CheckpointError(f"cannot resume: {'; '.join(map(str, failures))}; delete {names} to restart "
                              f"the run from iteration 0")
    return None, None
