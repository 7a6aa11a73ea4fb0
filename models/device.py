"""The one device resolver (training, evaluation, colorize and the Python API).

Device names are checked without torch (check_device), so the command line can refuse a bad
--device while parsing; torch is imported when a device is resolved."""
import contextlib
import re

DEVICE_NAMES = "auto, cpu, cuda or cuda:N"
_DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device(name: str) -> str:
    """`name` when it is auto, cpu, cuda or cuda:N; else ValueError saying which names are."""
    if not isinstance(name, str) or not _DEVICE_NAME.fullmatch(name):
        raise ValueError(f"unknown device {name!r}: use {DEVICE_NAMES}")
    return name


def resolve_device(device="auto", warn=None):
    """'auto' -> cuda when available, else cpu; 'cuda'/'cuda:N' without CUDA falls back to
    the CPU (warn(message) is called); a torch.device passes through.  -> torch.device"""
    import torch
    if isinstance(device, torch.device):
        return device
    want = check_device(str(device or "auto"))
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    elif want.startswith("cuda") and not torch.cuda.is_available():
        if warn:
            warn(f"device {device!r} requested but CUDA is not available: using the CPU")
        want = "cpu"
    return torch.device(want)


def use_bf16(precision, device) -> bool:
    """Config key `precision` on `device`: 'bf16' (autocast), 'fp32', or 'auto' = bf16 on CUDA only."""
    import torch
    return precision == "bf16" or (precision == "auto" and torch.device(device).type == "cuda")


def use_channels_last(setting, device) -> bool:
    """Config key `channels_last` on `device`: 'on', 'off', or 'auto' = on CUDA only."""
    import torch
    return setting == "on" or (setting == "auto" and torch.device(device).type == "cuda")


def autocast(device, precision="auto"):
    """bf16 autocast (the network runs in bf16, losses in float32) when use_bf16, else nothing;
    on the CPU too when precision is 'bf16'."""
    import torch
    device = torch.device(device)
    if use_bf16(precision, device):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
