"""FCN training on precomputed shards: data, loss/loop, metrics, checkpoints, visuals.

Submodules import torch; this package itself does not (Luigi may import it in
the scheduler process), names are resolved lazily:
    from train import fit, evaluate, ShardDataset, ...
"""
_EXPORTS = {
    "ShardDataset": "data", "make_loader": "data", "EpochSampler": "data",
    "fit": "loop", "train_one_epoch": "loop", "evaluate": "loop", "kl_loss": "loop",
    "upsample_targets": "loop", "is_better": "loop", "resolve_device": "loop",
    "load_model_from_checkpoint": "loop", "LOG_COLUMNS": "loop",
    "confusion_matrix": "metrics", "scores": "metrics", "ConfusionMeter": "metrics",
    "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint",
    "tile_image": "visual", "tile_grid": "visual", "plot_curves": "visual",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
