"""Plain helpers other test modules import: tiny EDM networks and deterministic parameter values."""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from skiptune.nets.edm import EDMPrecond

TINY_SONG: dict[str, Any] = dict(
    model_channels=16,
    channel_mult=[1, 2],
    num_blocks=1,
    attn_resolutions=[8],
    dropout=0.0,
)
TINY_DHARIWAL: dict[str, Any] = dict(
    model_channels=32,
    channel_mult=[1, 2],
    num_blocks=1,
    attn_resolutions=[8],
    dropout=0.0,
)


def deterministic_parameters(
    shapes: Mapping[str, Sequence[int]], *, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random but reproducible float32 values for parameters named ``shapes``; each depends only on
    (seed, name, shape), so two independent implementations with the same names get the same values.

    Unlike EDM's init (zero output convolutions), every layer gets O(1)-scale non-zero weights, so a
    wrong wire anywhere changes the output.
    """
    values = {}
    for name, shape in shapes.items():
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        noise = torch.randn(list(shape), generator=gen, dtype=torch.float32)
        if len(shape) >= 2:  # linear / conv weights: unit-variance outputs
            values[name] = noise / math.sqrt(math.prod(shape[1:]))
        elif name.endswith("weight"):  # group-norm gains
            values[name] = 1 + 0.2 * noise
        else:  # biases and group-norm shifts
            values[name] = 0.1 * noise
    return values


def randomize_(net: torch.nn.Module, *, seed: int = 0) -> torch.nn.Module:
    """Overwrite every parameter of ``net`` with :func:`deterministic_parameters` (buffers untouched)."""
    shapes = {name: tuple(p.shape) for name, p in net.named_parameters()}
    values = deterministic_parameters(shapes, seed=seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(values[name])
    return net


def tiny_precond(
    model_type: str = "SongUNet",
    *,
    label_dim: int = 0,
    img_resolution: int = 16,
    img_channels: int = 3,
    seed: int = 0,
    **overrides: Any,
) -> EDMPrecond:
    """A tiny EDMPrecond in eval mode with non-degenerate random weights (fast on a CPU).

    SongUNet: 16/32 channels, attention at 8x8. DhariwalUNet: 32/64 channels, attention at 8x8
    (one 64-channel head). ``overrides`` replace backbone keywords.
    """
    base = TINY_SONG if model_type == "SongUNet" else TINY_DHARIWAL
    kwargs = {**base, **overrides}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = EDMPrecond(
            img_resolution=img_resolution,
            img_channels=img_channels,
            label_dim=label_dim,
            model_type=model_type,
            **kwargs,
        )
    randomize_(net, seed=seed)
    return net.eval()
