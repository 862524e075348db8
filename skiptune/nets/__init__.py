"""Networks: EDM / EDM2-compatible backbones and preconditioning with Skip-Tuning coefficient buffers."""

from __future__ import annotations

from skiptune.nets.base import (
    BACKBONES,
    SkipTunable,
    SkipTunableBackbone,
    SkipTunablePrecond,
    supports_sigma_window,
)
from skiptune.nets.edm import DhariwalUNet, EDMPrecond, SongUNet
from skiptune.nets.edm2 import EDM2Precond, EDM2UNet
from skiptune.nets.precond import VEPrecond, VPPrecond

__all__ = [
    "BACKBONES",
    "DhariwalUNet",
    "EDM2Precond",
    "EDM2UNet",
    "EDMPrecond",
    "SkipTunable",
    "SkipTunableBackbone",
    "SkipTunablePrecond",
    "SongUNet",
    "VEPrecond",
    "VPPrecond",
    "supports_sigma_window",
]
