"""Networks: EDM / EDM2-compatible backbones and preconditioning with Skip-Tuning coefficient buffers."""

from __future__ import annotations

from skiptune.nets.edm import BACKBONES, DhariwalUNet, EDMPrecond, SkipTunableBackbone, SongUNet
from skiptune.nets.edm2 import EDM2Precond, EDM2UNet
from skiptune.nets.precond import VEPrecond, VPPrecond

__all__ = [
    "BACKBONES",
    "DhariwalUNet",
    "EDM2Precond",
    "EDM2UNet",
    "EDMPrecond",
    "SkipTunableBackbone",
    "SongUNet",
    "VEPrecond",
    "VPPrecond",
]
