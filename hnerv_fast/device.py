"""Device names -> torch devices, shared by the trainer (train.device) and the command-line tools (--device)."""
from __future__ import annotations

import torch

from hnerv_fast.errors import UserError


class DeviceError(UserError, ValueError):
    pass


def resolve_device(name: str, option: str) -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> a device, with its index on GPU. That GPU also becomes the current
    one, so code that uses the current device (CUDA events, Triton launches, the async writer) follows it.
    `option` names the setting in error messages (e.g. "train.device", "--device")."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:  # torch's message lists every device type it knows, most of which we do not run on
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index):
        raise DeviceError(f"{option}={name}: expected auto, cpu, cuda or cuda:N")
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise DeviceError(f"{option}={name} but no CUDA device is available (use {option}=auto or cpu)")
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    elif device.index >= torch.cuda.device_count():
        raise DeviceError(f"{option}={name} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    torch.cuda.set_device(device)
    return device
