"""A latent text-conditional UNet (diffusers ``UNet2DConditionModel``) as EDM's denoiser D(x; sigma, c).

Discrete variance-preserving models relate to EDM's ``x = x0 + sigma n`` by ``x_vp = x / sqrt(1 + sigma^2)``
with ``sigma_t = sqrt((1 - abar_t) / abar_t)`` over the training timesteps t = 0..T-1. The UNet sees
``c_in x`` (``c_in = 1 / sqrt(1 + sigma^2)``, as diffusers' Euler ``scale_model_input``) at the
timestep whose sigma matches: the inverse of diffusers' Euler interpolation (linear in sigma between
neighbouring integer timesteps over the float32 sigma table), so the scheduler's own sigmas give its
own timesteps. Its output becomes the denoised latent: ``x - sigma eps`` (epsilon) or
``c_in^2 x - sigma c_in v`` (v-prediction).

The condition (``class_labels`` of the denoiser contract) is the text encoder's hidden states
``[N, L, D]``; classifier-free guidance is a wrapper (``skiptune.sampling.conditions``), so the UNet
call here is one plain conditional evaluation. Skip-Tuning reaches the UNet through ``.unet``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from skiptune.errors import SkiptuneError
from skiptune.nets.pipelines.latent import LatentDecoder
from skiptune.nets.pipelines.text import TextEncoder

PREDICTION_TYPES = ("epsilon", "v_prediction")


def vp_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """float64 ``[T]`` sigma table, computed in float32 as diffusers' schedulers do, ascending in t."""
    acp = alphas_cumprod.to(torch.float32)
    return (((1 - acp) / acp) ** 0.5).to(torch.float64)


def sigma_to_timestep(sigma: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Fractional timesteps (float32) whose linearly interpolated table sigma is ``sigma`` (clamped).
    No host sync (the fast path compiles it): the clamp reads the table's ends as tensors."""
    s = torch.maximum(torch.minimum(sigma.to(torch.float64), table[-1]), table[0])
    idx = torch.searchsorted(table, s).clamp(1, table.numel() - 1)
    lo, hi = table[idx - 1], table[idx]
    return (idx - 1 + (s - lo) / (hi - lo)).to(torch.float32)


class TextLatentDenoiser(torch.nn.Module):
    """``D(x, sigma, class_labels=hidden_states)`` over latents, plus ``encode_text`` and ``decode``."""

    supports_sigma_window = False  # the skip hooks on the UNet's up blocks never see sigma

    def __init__(
        self,
        unet: torch.nn.Module,
        *,
        text: TextEncoder,
        decoder: LatentDecoder,
        alphas_cumprod: torch.Tensor,
        prediction_type: str,
        extra_identity: str = "",
    ) -> None:
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise SkiptuneError(
                f"prediction_type {prediction_type!r} is not supported; expected one of "
                f"{', '.join(PREDICTION_TYPES)}"
            )
        self.unet, self.text, self.decoder = unet, text, decoder
        self.prediction_type = prediction_type
        table = vp_sigmas(alphas_cumprod)
        if not bool(torch.isfinite(table).all()) or not bool((table[1:] > table[:-1]).all()):
            raise SkiptuneError(
                "the scheduler's noise schedule has non-finite or non-increasing sigmas (zero-terminal-SNR "
                "rescaling?); skiptune needs a finite sigma_max: set rescale_betas_zero_snr to false"
            )
        self.sigma_table: torch.Tensor
        self.register_buffer("sigma_table", table, persistent=False)
        config: Any = unet.config
        self.img_resolution = int(config.sample_size)
        self.img_channels = int(config.in_channels)
        self.label_dim = 0
        self.sigma_min, self.sigma_max = float(table[0]), float(table[-1])
        self.image_resolution = decoder.image_resolution
        self.image_channels = decoder.image_channels
        self.extra_identity = extra_identity  # configs + tokenizer files, hashed into the fingerprint

    def encode_text(self, prompts: Sequence[str], *, device: torch.device | str) -> torch.Tensor:
        """float32 ``[P, L, D]`` hidden states of ``prompts``, the condition ``forward`` takes."""
        return self.text.encode(prompts, device=device)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images for ``to_uint8`` from denoised latents (the VAE, in batches)."""
        return self.decoder(latents)

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None = None, **_: Any
    ) -> torch.Tensor:
        if class_labels is None or class_labels.dim() != 3:
            raise SkiptuneError(
                "this text-conditional model needs prompts: pass --prompts FILE (the denoiser takes the "
                "text encoder's hidden states [N, L, D] as its condition)"
            )
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        sigma = sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma
        s = sigma.reshape(-1, 1, 1, 1)
        c_in = 1 / (s**2 + 1) ** 0.5
        t = sigma_to_timestep(sigma, self.sigma_table.to(x.device))
        cond = class_labels.to(device=x.device)
        out = self.unet(x * c_in, t, encoder_hidden_states=cond).sample.float()
        if self.prediction_type == "epsilon":
            return x - s * out
        return c_in**2 * x - s * c_in * out
