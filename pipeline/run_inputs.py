"""A training run's inputs, as one file in its run folder: <run>/inputs.json.

The Luigi graph writes it (tasks.PrepareRun) once every input exists; training
reads nothing else, so `torchrun -m train.distributed --run-dir RUN` trains on
exactly what the Luigi task would, without knowing about Luigi.
"""
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .atomic import write_text_atomic
from .gmm import as_gmm

INPUTS_FILE = "inputs.json"


class RunInputsError(ValueError):
    """A run folder without (readable) inputs; the message is one line."""


@dataclass
class RunInputs:
    arch: str                      # registered architecture (models.registry)
    cfg: dict                      # the resolved experiment config (pipeline.config)
    train: list                    # [[Lab shard, label shard], ...] absolute paths, in plan order
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
        """Write <run_dir>/inputs.json, with every path made absolute (a work_dir given
        relative to the Luigi process's folder must not depend on where training starts)."""
        record = asdict(self)
        for split in ("train", "val"):
            record[split] = [[os.path.abspath(p) for p in pair] for pair in record[split]]
        if record["init_checkpoint"]:
            record["init_checkpoint"] = os.path.abspath(record["init_checkpoint"])
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
        inputs.train = [tuple(p) for p in inputs.train]
        inputs.val = [tuple(p) for p in inputs.val]
        return inputs
