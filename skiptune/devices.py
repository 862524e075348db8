"""Device choice shared by every verb: ``auto`` takes CUDA when present, else the CPU."""

from __future__ import annotations

import torch

from skiptune.errors import SkiptuneError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` as a device; a clear error where it cannot be had."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SkiptuneError(f"bad device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SkiptuneError(f"device {name!r} asked for but CUDA is not available here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SkiptuneError(
            f"device {name!r} asked for but this machine has {torch.cuda.device_count()} CUDA device(s) "
            f"(indices 0-{torch.cuda.device_count() - 1}); pass one of those"
        )
    return device
