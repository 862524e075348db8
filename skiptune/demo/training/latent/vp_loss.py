"""The discrete VP (DDPM) loss the demo's UNet learns, on the schedule its pipeline folder ships.

t ~ U{0..T-1}; z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps; the UNet predicts eps (SD 1.x's
``prediction_type="epsilon"``), so any diffusers scheduler built from the folder's scheduler config
samples it. ``abar`` is diffusers' own ``alphas_cumprod`` for that config, never a re-derivation.
Per-example weight min(SNR_t, gamma) / SNR_t (Min-SNR, Hang et al. 2023) when ``min_snr_gamma`` is set:
it stops the nearly-clean timesteps, whose epsilon is hard to see and cheap to get wrong, from
dominating the gradient, which speeds up a short training run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def alphas_cumprod(scheduler_config: dict[str, object]) -> torch.Tensor:
    """``alphas_cumprod`` [T] float32 of the DDPM schedule ``scheduler_config`` describes (diffusers)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler_config).alphas_cumprod.float()


@dataclass(frozen=True)
class VPEpsilonLoss:
    """Per-example epsilon-prediction loss on a discrete schedule ``abar`` ([T], float32)."""

    abar: torch.Tensor
    min_snr_gamma: float | None = 5.0

    def noisy(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        a = self.abar.to(z0.device)[t].view(-1, 1, 1, 1)
        return a.sqrt() * z0 + (1 - a).sqrt() * noise

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        if self.min_snr_gamma is None:
            return torch.ones(t.shape, device=t.device)
        a = self.abar.to(t.device)[t]
        snr = a / (1 - a)
        return snr.clamp(max=self.min_snr_gamma) / snr

    def __call__(
        self,
        unet: nn.Module,
        z0: torch.Tensor,
        condition: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """[N] weighted mean squared errors of ``unet(z_t, t, condition)`` against the added noise."""
        n = z0.shape[0]
        t = torch.randint(0, self.abar.numel(), (n,), device=z0.device, generator=generator)
        noise = torch.randn(z0.shape, device=z0.device, generator=generator)
        pred = unet(self.noisy(z0, t, noise), t, encoder_hidden_states=condition).sample
        return self.weight(t) * (pred.float() - noise).pow(2).mean(dim=(1, 2, 3))
