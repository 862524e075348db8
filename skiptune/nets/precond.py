"""EDM's variance-preserving (``VPPrecond``) and variance-exploding (``VEPrecond``) preconditioning.

These wrap the same skip-tunable backbones as :class:`~skiptune.nets.edm.EDMPrecond`, so EDM's
``baseline-*-vp.pkl`` / ``baseline-*-ve.pkl`` pickles load. Constructor keywords, defaults, attributes
(``sigma_min`` / ``sigma_max`` as EDM computes them) and ``state_dict`` keys match NVlabs/edm
``training/networks.py``. Skip-Tuning works as in ``EDMPrecond``: a non-persistent ``skip_window``
buffer ``[lo, hi]`` selects the samples (by sigma) whose skips get the backbone's coefficients, and
``init_kwargs`` records the constructor arguments for ``save_checkpoint``.
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Any

import torch

from skiptune.errors import SkiptuneError
from skiptune.nets.edm import BACKBONES, SkipTunableBackbone, one_hot_labels

__all__ = ["VEPrecond", "VPPrecond"]


def _build_backbone(model_type: str, **kwargs: Any) -> SkipTunableBackbone:
    """``BACKBONES[model_type](**kwargs)``, with a clear error for keywords the backbone lacks."""
    backbone = BACKBONES.get(model_type)
    try:
        inspect.signature(backbone).bind(**kwargs)
    except TypeError as exc:
        raise SkiptuneError(
            f"{model_type} does not accept the arguments {sorted(kwargs)}: {exc}; "
            f"see the {model_type} constructor for its keywords"
        ) from None
    return backbone(**kwargs)


class _SkipTunablePrecond(torch.nn.Module):
    """What VP and VE share: backbone ``model``, ``skip_window`` buffer, labels, the ``D`` formula."""

    skip_window: torch.Tensor

    def _setup(self, init_kwargs: dict[str, Any], model_type: str, model_kwargs: dict[str, Any]) -> None:
        # The constructor arguments, so save_checkpoint() can rebuild the net without a config.
        self.init_kwargs: dict[str, Any] = copy.deepcopy(
            {**init_kwargs, "model_type": model_type, **model_kwargs}
        )
        self.img_resolution: int = init_kwargs["img_resolution"]
        self.img_channels: int = init_kwargs["img_channels"]
        self.label_dim: int = init_kwargs["label_dim"]
        self.use_fp16: bool = init_kwargs["use_fp16"]
        self.model: SkipTunableBackbone = _build_backbone(
            model_type,
            img_resolution=self.img_resolution,
            in_channels=self.img_channels,
            out_channels=self.img_channels,
            label_dim=self.label_dim,
            **model_kwargs,
        )
        window = torch.tensor([-math.inf, math.inf], dtype=torch.float32)
        self.register_buffer("skip_window", window, persistent=False)

    def _coefficients(
        self, sigma: torch.Tensor
    ) -> tuple[float | torch.Tensor, torch.Tensor, float | torch.Tensor, torch.Tensor]:
        """``(c_skip, c_out, c_in, c_noise)`` for float32 sigma ``[N, 1, 1, 1]``."""
        raise NotImplementedError

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
        force_fp32: bool = False,
        **model_kwargs: Any,
    ) -> torch.Tensor:
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
        labels = self._class_labels(class_labels, x)
        fp16 = self.use_fp16 and not force_fp32 and x.device.type == "cuda"
        dtype = torch.float16 if fp16 else torch.float32
        c_skip, c_out, c_in, c_noise = self._coefficients(sigma)
        window = self.skip_window.to(device=x.device, dtype=torch.float32)
        skip_mask = ((sigma >= window[0]) & (sigma <= window[1])).reshape(-1)
        f_x = self.model(
            (c_in * x).to(dtype), c_noise.flatten(), class_labels=labels, skip_mask=skip_mask, **model_kwargs
        )
        return c_skip * x + c_out * f_x.to(torch.float32)

    def _class_labels(self, class_labels: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
        if self.label_dim == 0:
            return None
        if class_labels is None:
            # EDM's convention: the all-zero label (unconditional direction), broadcast over the batch.
            return torch.zeros([1, self.label_dim], device=x.device)
        labels = one_hot_labels(torch.as_tensor(class_labels, device=x.device), self.label_dim)
        return labels.to(torch.float32).reshape(-1, self.label_dim)

    def round_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        return torch.as_tensor(sigma)


class VPPrecond(_SkipTunablePrecond):
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

    def _coefficients(
        self, sigma: torch.Tensor
    ) -> tuple[float | torch.Tensor, torch.Tensor, float | torch.Tensor, torch.Tensor]:
        c_in = 1 / (sigma**2 + 1).sqrt()
        return 1, -sigma, c_in, (self.M - 1) * self.sigma_inv(sigma)


class VEPrecond(_SkipTunablePrecond):
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

    def _coefficients(
        self, sigma: torch.Tensor
    ) -> tuple[float | torch.Tensor, torch.Tensor, float | torch.Tensor, torch.Tensor]:
        return 1, sigma, 1, (0.5 * sigma).log()
