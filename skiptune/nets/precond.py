"""EDM's variance-preserving (``VPPrecond``) and variance-exploding (``VEPrecond``) preconditioning.

These wrap the same skip-tunable backbones as :class:`~skiptune.nets.edm.EDMPrecond` (all three subclass
:class:`~skiptune.nets.base.SkipTunablePrecond`), so EDM's ``baseline-*-vp.pkl`` / ``baseline-*-ve.pkl``
pickles load. Constructor keywords, defaults, attributes (``sigma_min`` / ``sigma_max`` as EDM computes
them) and ``state_dict`` keys match NVlabs/edm ``training/networks.py``. Skip-Tuning works as in
``EDMPrecond``: a non-persistent ``skip_window`` buffer ``[lo, hi]`` selects the samples (by sigma) whose
skips get the backbone's coefficients, and ``init_kwargs`` records the constructor arguments for
``save_checkpoint``.
"""

from __future__ import annotations

from typing import Any

import torch

from skiptune.nets.base import Coefficients, SkipTunablePrecond

__all__ = ["VEPrecond", "VPPrecond"]


class VPPrecond(SkipTunablePrecond):
    """VP preconditioning (Song et al. 2021): ``D = x - sigma F(x / sqrt(sigma^2 + 1), (M - 1) t(sigma))``.

    ``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)``; the supported range is
    ``[sigma(epsilon_t), sigma(1)]``.
    """

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        beta_d: float = 19.9,
        beta_min: float = 0.1,
        M: int = 1000,
        epsilon_t: float = 1e-5,
        model_type: str = "SongUNet",
        **model_kwargs: Any,
    ) -> None:
        super().__init__()
        init = dict(
            img_resolution=img_resolution,
            img_channels=img_channels,
            label_dim=label_dim,
            use_fp16=use_fp16,
            beta_d=beta_d,
            beta_min=beta_min,
            M=M,
            epsilon_t=epsilon_t,
        )
        self._setup(init, model_type, model_kwargs)
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.M = M
        self.epsilon_t = epsilon_t
        # As EDM: evaluated in float32 tensors, then stored as Python floats.
        self.sigma_min = float(self.sigma(epsilon_t))
        self.sigma_max = float(self.sigma(1))

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """Noise level at time ``t``."""
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * (t**2) + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Time ``t`` at noise level ``sigma`` (inverse of :meth:`sigma`)."""
        sigma = torch.as_tensor(sigma)
        root = (self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt()
        return (root - self.beta_min) / self.beta_d

    def _coefficients(self, sigma: torch.Tensor) -> Coefficients:
        c_in = 1 / (sigma**2 + 1).sqrt()
        return 1, -sigma, c_in, (self.M - 1) * self.sigma_inv(sigma)


class VEPrecond(SkipTunablePrecond):
    """VE preconditioning (Song et al. 2021): ``D = x + sigma F(x, log(sigma / 2))``."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        sigma_min: float = 0.02,
        sigma_max: float = 100,
        model_type: str = "SongUNet",
        **model_kwargs: Any,
    ) -> None:
        super().__init__()
        init = dict(
            img_resolution=img_resolution,
            img_channels=img_channels,
            label_dim=label_dim,
            use_fp16=use_fp16,
            sigma_min=sigma_min,
            sigma_max=sigma_max,
        )
        self._setup(init, model_type, model_kwargs)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def _coefficients(self, sigma: torch.Tensor) -> Coefficients:
        return 1, sigma, 1, (0.5 * sigma).log()
