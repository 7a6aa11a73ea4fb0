"""Checkpoints that load with torch.load(weights_only=True).

A checkpoint is a dict of tensors and plain Python values only (no numpy
arrays, no pickled classes), so loading one can never run code (train.rng keeps
the RNG states in that form).  Files are written through pipeline.atomic.atomic_path (temporary file
+ rename): a crash mid-save leaves the previous checkpoint intact.
"""
import torch

from pipeline.atomic import atomic_path


def save_checkpoint(path, payload: dict) -> None:
    """Atomically torch.save `payload` to `path`."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path, map_location="cpu") -> dict:
    """torch.load with weights_only=True; errors name the file."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        raise RuntimeError(f"cannot load checkpoint {path}: {e}") from e
