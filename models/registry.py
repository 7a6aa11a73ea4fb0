"""The registries: every network the pipeline can train, and every decoder, by name.

This module imports no torch, so the Luigi graph (tasks.py) can read it in a
light planning process: it makes one training task per entry, and a task's
coarser run (FCN-16s starts from the best FCN-32s) comes from `init_from`.
A new network is one module with a `build(name, n_classes, width)` function
plus one `register(...)` line below.

DECODERS names the decoders (posteriors -> colour) that models.decoders
implements; the colorize CLI's choices, Evaluate's methods and the report's
columns all come from it (the CLI reads it here, without torch).
"""
import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    name: str                 # "fcn16s": run folders, checkpoints and --arch use it
    task: str                 # the Luigi task that trains it: "TrainFCN16s"
    module: str               # the module whose build(name, n_classes, width) makes it
    init_from: str = None     # the architecture whose best run it starts from (None: scratch)
    summary: str = ""         # one line for task docstrings and --help

    def build(self, n_classes: int, width: float):
        """The untrained network: (N, 1, H, W) mean-centred lightness -> (N, K, H, W) scores."""
        return importlib.import_module(self.module).build(self.name, n_classes, width)


ARCHITECTURES = {}


def build_network(arch: str, n_classes: int, width: float = 1.0):
    """The untrained network of a registered architecture."""
    return get_architecture(arch).build(n_classes, width)


def register(arch: Architecture) -> Architecture:
    if arch.name in ARCHITECTURES:
        raise ValueError(f"architecture {arch.name!r} is registered twice")
    if arch.init_from is not None and arch.init_from not in ARCHITECTURES:
        raise ValueError(f"{arch.name} starts from {arch.init_from!r}, which is not registered (yet)")
    ARCHITECTURES[arch.name] = arch
    return arch


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; registered: {sorted(ARCHITECTURES)}") from None


register(Architecture("fcn32s", "TrainFCN32s", "models.fcn", None,
                      "FCN-32s: VGG16-BN trunk, scores upsampled 32x"))
register(Architecture("fcn16s", "TrainFCN16s", "models.fcn", "fcn32s",
                      "FCN-16s: adds pool4 scores; starts from the best FCN-32s"))
register(Architecture("fcn8s", "TrainFCN8s", "models.fcn", "fcn16s",
                      "FCN-8s: adds pool3 scores; starts from the best FCN-16s"))


# name -> what it does; models.decoders implements exactly these.
DECODERS = {
    "max": "the colour of the most probable cluster (argmax)",
    "mean": "the posterior-weighted mean of the cluster colours, in (a, b)",
    "annealed": "Zhang et al.'s annealed mean: p^(1/T) renormalised, then the mean",
}
DEFAULT_DECODER = "annealed"
DEFAULT_TEMPERATURE = 0.38      # the annealed mean's T (Zhang et al. 2016)
