"""Every RNG a run draws from, seeded once and saved in checkpoints as tensors and
plain Python values (weights-only loadable), so a resumed run draws what an
uninterrupted one would."""
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)       # seeds CUDA too, lazily, without initialising it


def numpy_rng_state() -> dict:
    """np.random's global MT19937 state as plain Python values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def set_numpy_rng_state(state: dict) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"],
                         state["cached_gaussian"]))


def python_rng_state() -> dict:
    version, internal, gauss_next = random.getstate()
    return {"version": int(version), "internal": list(internal), "gauss_next": gauss_next}


def set_python_rng_state(state: dict) -> None:
    random.setstate((state["version"], tuple(state["internal"]), state["gauss_next"]))


def rng_states(loader_generator=None) -> dict:
    """Every RNG a run draws from: torch (CPU and, if initialised, CUDA), numpy, python,
    and the DataLoader's generator."""
    states = {"torch": torch.get_rng_state(), "numpy": numpy_rng_state(),
              "python": python_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    if loader_generator is not None:
        states["loader"] = loader_generator.get_state()
    return states


def set_rng_states(states: dict, loader_generator=None) -> None:
    torch.set_rng_state(states["torch"].cpu())
    set_numpy_rng_state(states["numpy"])
    set_python_rng_state(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        cuda = states["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    if loader_generator is not None and "loader" in states:
        loader_generator.set_state(states["loader"].cpu())
