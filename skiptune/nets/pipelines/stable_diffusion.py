"""Load a Stable Diffusion 1.x/2.x pipeline folder (diffusers layout) as a :class:`TextLatentDenoiser`.

Components are built from their configs and filled from safetensors; nothing from the folder runs.
The checks a mismatched folder fails with one line: UNet type and extra conditioning, the VAE's latent
channels against the UNet's input, the text encoder's width against the UNet's cross-attention.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from skiptune.errors import SkiptuneError
from skiptune.nets.pipelines.denoiser import TextLatentDenoiser
from skiptune.nets.pipelines.folder import folder_identity, load_state, read_json, read_safetensors
from skiptune.nets.pipelines.latent import load_vae, stable_diffusion_decoder
from skiptune.nets.pipelines.text import load_text_encoder

# UNet features that add conditioning inputs a SD 1.x/2.x pipeline never passes.
_EXTRA_CONDITIONING = ("addition_embed_type", "class_embed_type", "time_cond_proj_dim", "encoder_hid_dim")


def load_stable_diffusion(root: Path, *, device: str | torch.device = "cpu") -> TextLatentDenoiser:
    """The folder's UNet, VAE, CLIP text encoder and noise schedule as one denoiser on ``device``."""
    import diffusers

    unet_config = read_json(root / "unet" / "config.json")
    _check_unet(unet_config, root)
    unet = diffusers.UNet2DConditionModel.from_config(unet_config)
    load_state(unet, read_safetensors(root / "unet", "diffusion_pytorch_model"), source=root / "unet")
    vae = load_vae(root / "vae")
    vae_config: Any = vae.config
    if int(vae_config.latent_channels) != int(unet_config["in_channels"]):
        raise SkiptuneError(
            f"{root}: the VAE has {vae_config.latent_channels} latent channels but the UNet takes "
            f"{unet_config['in_channels']}; the folder mixes components of different models"
        )
    text, text_config = load_text_encoder(root)
    if int(text_config["hidden_size"]) != int(unet_config.get("cross_attention_dim") or -1):
        raise SkiptuneError(
            f"{root}: the text encoder's width {text_config['hidden_size']} is not the UNet's "
            f"cross_attention_dim {unet_config.get('cross_attention_dim')}; the folder mixes components"
        )
    sched_config = read_json(root / "scheduler" / "scheduler_config.json")
    scheduler = diffusers.DDPMScheduler.from_config(sched_config)  # its betas -> alphas_cumprod only
    vae_json = read_json(root / "vae" / "config.json")
    configs = {"unet": unet_config, "vae": vae_json, "text_encoder": text_config, "scheduler": sched_config}
    denoiser = TextLatentDenoiser(
        unet.eval(),
        text=text,
        decoder=stable_diffusion_decoder(vae, latent_resolution=int(unet_config["sample_size"])),
        alphas_cumprod=scheduler.alphas_cumprod,
        prediction_type=str(sched_config.get("prediction_type", "epsilon")),
        extra_identity=folder_identity(root, configs, root / "tokenizer"),
    )
    return denoiser.to(device).eval()


def _check_unet(config: dict[str, Any], root: Path) -> None:
    where = root / "unet" / "config.json"
    if config.get("_class_name") != "UNet2DConditionModel":
        raise SkiptuneError(f"{where} describes {config.get('_class_name')!r}, expected UNet2DConditionModel")
    extra = [key for key in _EXTRA_CONDITIONING if config.get(key) is not None]
    if extra:
        raise SkiptuneError(
            f"{where} sets {', '.join(extra)}: extra conditioning a Stable Diffusion 1.x/2.x pipeline "
            "does not pass (SDXL, LCM, unCLIP); not supported"
        )
    if not isinstance(config.get("sample_size"), int):
        raise SkiptuneError(
            f"{where}: sample_size {config.get('sample_size')!r}, expected one integer (square)"
        )
