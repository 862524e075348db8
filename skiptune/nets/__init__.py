"""Networks: EDM-compatible backbones and preconditioning with Skip-Tuning coefficient buffers."""

from __future__ import annotations

from skiptune.nets.edm import BACKBONES, DhariwalUNet, EDMPrecond, SkipTunableBackbone, SongUNet

__all__ = ["BACKBONES", "DhariwalUNet", "EDMPrecond", "SkipTunableBackbone", "SongUNet"]
