"""Latents -> images: a diffusers ``AutoencoderKL`` decoder with the latent scaling of its model family.

Stable Diffusion: ``image = vae.decode(z / scaling_factor)``, in [-1, 1] (as ``StableDiffusionPipeline``).
EDM2 (NVlabs/edm2 ``training/encoders.py``, StabilityVAEEncoder): the final latents are the raw VAE
latents whitened per channel, ``z = raw * scale + bias`` with ``scale = 0.5 / raw_std`` and
``bias = -raw_mean * scale`` (raw_mean 5.81, 3.25, 0.12, -2.15; raw_std 4.17, 4.62, 3.71, 3.28); the VAE
there maps [0, 1] images, and EDM2 quantises ``clamp(y, 0, 1) * 255`` by truncation. The decoder
returns images in the [-1, 1] convention of :func:`skiptune.sampling.to_uint8`, chosen per family so
that ``to_uint8`` gives exactly that family's pixels (SD: ``round(255 (x/2 + 1/2))``, diffusers' rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from skiptune.errors import SkiptuneError
from skiptune.nets.pipelines.folder import load_state, read_json, read_safetensors

EDM2_RAW_MEAN = (5.81, 3.25, 0.12, -2.15)
EDM2_RAW_STD = (4.17, 4.62, 3.71, 3.28)
EDM2_FINAL_STD = 0.5
DECODE_BATCH = 8  # images per VAE call (EDM2's default): a 512x512 decode is memory-hungry


class LatentDecoder(torch.nn.Module):
    """``decode(z) -> float32 images`` for ``to_uint8``; ``image_resolution`` / ``image_channels`` of them."""

    def __init__(
        self,
        vae: torch.nn.Module,
        *,
        scale: Sequence[float],
        bias: Sequence[float],
        unit_range: bool,
        latent_resolution: int,
    ) -> None:
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        config: Any = vae.config
        self.latent_channels = int(config.latent_channels)
        self.image_channels = int(config.out_channels)
        self.image_resolution = latent_resolution * 2 ** (len(config.block_out_channels) - 1)
        self.scale: torch.Tensor
        self.bias: torch.Tensor
        shape = (1, -1, 1, 1)
        self.register_buffer(
            "scale", torch.tensor(scale, dtype=torch.float32).reshape(shape), persistent=False
        )
        self.register_buffer("bias", torch.tensor(bias, dtype=torch.float32).reshape(shape), persistent=False)
        self.unit_range = unit_range  # the VAE's images are in [0, 1] (EDM2) rather than [-1, 1] (SD)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        raw = (z.to(torch.float32) - self.bias) / self.scale
        vae: Any = self.vae
        with torch.inference_mode():
            y = torch.cat([vae.decode(part).sample.float() for part in raw.split(DECODE_BATCH)])
        if self.unit_range:
            # to_uint8(x) = trunc(127.5 x + 128) then equals EDM2's trunc(255 clamp(y, 0, 1))
            return (255 * y - 128) / 127.5
        return y


def load_vae(folder: Path) -> torch.nn.Module:
    """A diffusers ``AutoencoderKL`` from ``config.json`` + safetensors in ``folder``."""
    try:
        import diffusers
    except ImportError:
        raise SkiptuneError("latent models need: pip install 'skiptune[diffusers]'") from None
    config = read_json(folder / "config.json")
    if config.get("_class_name") != "AutoencoderKL":
        raise SkiptuneError(
            f"{folder / 'config.json'} describes {config.get('_class_name')!r}; the VAE must be a diffusers "
            "AutoencoderKL folder (e.g. a local copy of stabilityai/sd-vae-ft-mse)"
        )
    vae = diffusers.AutoencoderKL.from_config(config)
    load_state(vae, read_safetensors(folder, "diffusion_pytorch_model"), source=folder)
    return vae.eval()


def stable_diffusion_decoder(vae: torch.nn.Module, *, latent_resolution: int) -> LatentDecoder:
    """SD's decoding: ``vae.decode(z / scaling_factor)``, images in [-1, 1]."""
    config: Any = vae.config
    factor = float(config.scaling_factor if config.scaling_factor is not None else 0.18215)
    channels = int(config.latent_channels)
    return LatentDecoder(vae, scale=[factor] * channels, bias=[0.0] * channels, unit_range=False,
                         latent_resolution=latent_resolution)  # fmt: skip


def edm2_decoder(vae: torch.nn.Module, *, latent_resolution: int) -> LatentDecoder:
    """EDM2's decoding of its whitened latents with Stability's VAE (constants in the module docstring)."""
    config: Any = vae.config
    if int(config.latent_channels) != len(EDM2_RAW_MEAN):
        raise SkiptuneError(
            f"the VAE has {config.latent_channels} latent channels; EDM2's latents have {len(EDM2_RAW_MEAN)} "
            "(use stabilityai/sd-vae-ft-mse, the VAE EDM2 was trained with)"
        )
    scale = [EDM2_FINAL_STD / s for s in EDM2_RAW_STD]
    bias = [-m * k for m, k in zip(EDM2_RAW_MEAN, scale)]
    return LatentDecoder(vae, scale=scale, bias=bias, unit_range=True, latent_resolution=latent_resolution)
