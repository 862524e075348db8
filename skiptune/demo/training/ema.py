"""Exponential moving average of weights, with EDM's half-life-in-images parameterisation.

EDM sets the decay per step from a half-life measured in training images, so it does not depend on
the batch size, and ramps the half-life up early (half-life <= ratio * images seen) so the EMA does
not remember the random initialisation for long.
"""

from __future__ import annotations

import torch
from torch import nn


def ema_beta(
    *, batch_size: int, images_seen: int, halflife_images: float, rampup_ratio: float | None
) -> float:
    """The decay for one step: 0.5 ** (batch_size / half-life), half-life ramped up if asked."""
    halflife = float(halflife_images)
    if rampup_ratio is not None:
        halflife = min(halflife, images_seen * rampup_ratio)
    return 0.5 ** (batch_size / max(halflife, 1e-8))


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, *, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * net, for every parameter; buffers are copied as they are."""
    ema_params, net_params = list(ema.parameters()), [p.detach() for p in net.parameters()]
    if len(ema_params) != len(net_params):
        raise ValueError(f"EMA has {len(ema_params)} parameters but the net has {len(net_params)}")
    # One fused kernel per dtype/device group instead of one launch per tensor (small nets are launch-bound).
    torch._foreach_lerp_(ema_params, net_params, 1.0 - beta)  # type: ignore[arg-type]
    for b_ema, b_net in zip(ema.buffers(), net.buffers(), strict=True):
        b_ema.copy_(b_net)
