"""The EDM training loss (Karras et al. 2022, eq. 2 with the weighting lambda of Table 1).

sigma ~ LogNormal(P_mean, P_std); loss = lambda(sigma) * ||D(y + n; sigma) - y||^2 with
lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2, which makes the effective target
of the raw network F unit-variance at every noise level.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class EDMLoss:
    """Per-pixel EDM loss; ``P_mean``/``P_std`` set the log-normal noise-level distribution."""

    P_mean: float = -1.2
    P_std: float = 1.2
    sigma_data: float = 0.5

    def sample_sigma(
        self, n: int, *, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        rnd = torch.randn([n, 1, 1, 1], device=device, generator=generator)
        return (rnd * self.P_std + self.P_mean).exp()

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def __call__(
        self,
        net: nn.Module,
        images: torch.Tensor,
        *,
        sigma: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[N,C,H,W]`` weighted squared errors; ``sigma`` ``[N,1,1,1]`` / unit ``noise`` drawn if absent."""
        if sigma is None:
            sigma = self.sample_sigma(images.shape[0], device=images.device)
        if noise is None:
            noise = torch.randn_like(images)
        denoised = net(images + noise * sigma, sigma.flatten(), labels)
        return self.weight(sigma) * (denoised.float() - images) ** 2
