"""A training run's inputs, as one file in its run folder: <run>/inputs.json.

The Luigi graph writes it (tasks.PrepareRun) once every input exists; training
reads nothing else, so `torchrun -m train.distributed --run-dir RUN` trains on
exactly what the Luigi task would, without knowing about Luigi.

Paths inside the run's work folder (<work>/runs/<run>: its shards, the coarser run's
best.pt) are stored relative to the run folder ("../../lab/s256/<sig>.h5"), so a moved
or copied work folder keeps every run usable and a copy reads its own files, never the
original's.  Paths outside it (a shard of a benchmark) stay absolute.  An inputs.json
written before (absolute paths) is read with each path that points outside this work
folder taken from this work folder instead, when it holds the same file (rebased).
"""
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .atomic import write_text_atomic
from .gmm import as_gmm

INPUTS_FILE = "inputs.json"


#: The work folder's subfolders that inputs.json paths lead into (tasks.py's layout).
WORK_FOLDERS = ("lab", "labels", "runs")


class RunInputsError(ValueError):
    """A run folder without (readable) inputs; the message is one line."""


def work_folder(run_dir) -> str:
    """The work folder of a run folder <work>/runs/<run>, symbolic links resolved."""
    return os.path.dirname(os.path.dirname(os.path.realpath(run_dir)))


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def portable_path(path, run_dir) -> str:
    """How a run folder's files refer to `path`: relative to the run folder when it lies in
    the run's work folder (so the reference moves with it), else absolute."""
    path = os.path.realpath(path)
    run_dir = os.path.realpath(run_dir)
    return os.path.relpath(path, run_dir) if _inside(path, work_folder(run_dir)) else path


def resolve_path(stored: str, run_dir) -> str:
    """The absolute path a reference written by portable_path (or, before it, an absolute path
    into some work folder) stands for in this run folder's work folder."""
    run_dir = os.path.realpath(run_dir)
    if not os.path.isabs(stored):
        return os.path.normpath(os.path.join(run_dir, stored))
    work = work_folder(run_dir)
    if _inside(os.path.normpath(stored), work):
        return stored
    parts = Path(stored).parts
    for i, part in enumerate(parts):                 # <old work>/lab/... -> <this work>/lab/...
        if part in WORK_FOLDERS and os.path.isfile(os.path.join(work, *parts[i:])):
            return os.path.join(work, *parts[i:])
    return stored


@dataclass
class RunInputs:
    arch: str                      # registered architecture (models.registry)
    cfg: dict                      # the resolved experiment config (pipeline.config)
    train: list                    # [[Lab shard, label shard], ...] absolute paths, in plan order
    #                                (stored relative to the run folder: portable_path)
    val: list                      # the same for the validation split
    mean_L: float                  # mean lightness of the training images (subtracted from inputs)
    gmm: dict                      # {weights, means, covariances} as lists: the K colour clusters
    init_checkpoint: str = None    # the coarser run's best.pt this one starts from, if any
    class_weights: list = None     # (K,) rebalancing weights, if cfg rebalance > 0
    dataset: str = ""              # the dataset root the shards were made from
    extra: dict = field(default_factory=dict)   # free-form notes (e.g. the Luigi task)

    @property
    def n_clusters(self) -> int:
        return int(self.cfg["n_clusters"])

    def gmm_arrays(self) -> dict:
        return as_gmm(self.gmm, "run inputs")

    def save(self, run_dir) -> Path:
        """Write <run_dir>/inputs.json, paths as portable_path stores them (never relative to
        the Luigi process's folder: that must not matter to where training starts)."""
        record = asdict(self)
        for split in ("train", "val"):
            record[split] = [[portable_path(p, run_dir) for p in pair] for pair in record[split]]
        if record["init_checkpoint"]:
            record["init_checkpoint"] = portable_path(record["init_checkpoint"], run_dir)
        path = Path(run_dir) / INPUTS_FILE
        write_text_atomic(path, json.dumps(record, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, run_dir) -> "RunInputs":
        path = Path(run_dir) / INPUTS_FILE
        try:
            data = json.loads(path.read_text())
            inputs = cls(**data)
        except FileNotFoundError:
            raise RunInputsError(f"{path} does not exist: prepare the run first "
                                 f"(luigi --module tasks PrepareRun --config N [--arch A])") from None
        except (OSError, ValueError, TypeError) as e:
            raise RunInputsError(f"cannot read {path}: {' '.join(str(e).split())}") from None
        try:
            inputs.train, inputs.val = ([tuple(resolve_path(p, run_dir) for p in pair) for pair in pairs]
                                        for pairs in (inputs.train, inputs.val))
            if inputs.init_checkpoint:
                inputs.init_checkpoint = resolve_path(inputs.init_checkpoint, run_dir)
        except TypeError as e:
            raise RunInputsError(f"cannot read {path}: {' '.join(str(e).split())}") from None
        return inputs
