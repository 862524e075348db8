"""Device helpers for the trainers (device choice itself lives in ``skiptune.devices``)."""

from __future__ import annotations

import torch


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA (the H100's fast path); a disabled context elsewhere (CPU stays fp32)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
