"""The one device resolver (training, evaluation, colorize and the Python API)."""
import contextlib

import torch


def resolve_device(device="auto", warn=None) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda'/'cuda:N' without CUDA falls back to
    the CPU (warn(message) is called); a torch.device passes through."""
    want = str(device or "auto")
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    elif want.startswith("cuda") and not torch.cuda.is_available():
        if warn:
            warn(f"device {device!r} requested but CUDA is not available: using the CPU")
        want = "cpu"
    try:
        return torch.device(want)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None


def autocast(device):
    """bf16 autocast on CUDA (the network runs in bf16, losses in float32), nothing on CPU."""
    if torch.device(device).type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
