"""The device a command runs on: a name checked before any folder is made or any work begins."""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A device name that is not one, a device type ecgfast does not run on, or a GPU that is not there."""


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """``name`` checked (``cpu``, ``cuda``, ``cuda:N`` of a GPU that exists), or by default this rank's GPU where
    CUDA is available, else the CPU.

    Raises:
        DeviceError: naming the device and what is wrong with it.
    """
    if name is None:
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise DeviceError(f"device {name!r} is not a device name (cpu, cuda, cuda:N)") from exc
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"device {name!r}: ecgfast runs on cpu or cuda")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"device {name!r}: no CUDA GPU is visible here (torch {torch.__version__}); use cpu")
        if device.index is not None and device.index >= count:
            raise DeviceError(f"device {name!r}: only {count} CUDA GPU(s) visible (cuda:0 to cuda:{count - 1})")
    return device


__all__ = ["DeviceError", "resolve_device"]
