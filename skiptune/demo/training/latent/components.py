"""The latent demo's parts, built from one size description, and the pipeline folder they make.

A ``StableDiffusionPipeline`` folder as diffusers writes it (``model_index.json``, ``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``; safetensors weights; no safety checker), so
``StableDiffusionPipeline.from_pretrained(folder)`` and every SD-1.x-style loader read it:

- ``AutoencoderKL``: 1 channel 32x32 <-> ``latent_channels`` x 16x16 (one down-sampling per extra block);
- ``CLIPTextModel``: a tiny CLIP text transformer over the prompts' vocabulary (``prompts.py``);
- ``UNet2DConditionModel``: cross-attention to the text encoder's last hidden states;
- ``DDIMScheduler``: SD 1.x's discrete VP schedule (1000 steps, scaled-linear betas 0.00085..0.012),
  epsilon prediction; the training loss (``vp_loss.py``) reads ``alphas_cumprod`` from the same config.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skiptune.errors import SkiptuneError

if TYPE_CHECKING:
    from transformers import CLIPTextModel, CLIPTokenizer

# diffusers' classes are loaded lazily, which mypy cannot follow: annotations name them through these
# aliases (Any to the checker; the comment says which class each one is).
VAE = Any  # diffusers.AutoencoderKL
UNet = Any  # diffusers.UNet2DConditionModel
Pipeline = Any  # diffusers.StableDiffusionPipeline
Scheduler = Any  # diffusers.DDIMScheduler

PREDICTION_TYPE = "epsilon"
PIPELINE_FILES = ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler")
SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type=PREDICTION_TYPE,
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="leading",
)


@dataclass(frozen=True)
class LatentDemoConfig:
    """Sizes of the three networks (the defaults are the shipped model's; ``tiny()`` is for tests)."""

    vae_channels: tuple[int, ...] = (32, 64)  # one block per entry; each after the first halves 32x32
    latent_channels: int = 4
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    unet_channels: tuple[int, ...] = (64, 96, 96)
    unet_layers_per_block: int = 1
    unet_heads: int = 4
    norm_groups: int = 32

    @classmethod
    def tiny(cls) -> LatentDemoConfig:
        """A few thousand parameters per part: CPU tests and ``--smoke`` runs."""
        return cls(vae_channels=(8, 8), text_width=16, text_layers=1, text_heads=2,
                   unet_channels=(16, 16), unet_heads=2, norm_groups=8)  # fmt: skip

    @property
    def latent_resolution(self) -> int:
        return 32 // 2 ** (len(self.vae_channels) - 1)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_vae(config: LatentDemoConfig) -> VAE:
    from diffusers import AutoencoderKL

    n = len(config.vae_channels)
    return AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=config.latent_channels,
        block_out_channels=config.vae_channels, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, layers_per_block=1, norm_num_groups=config.norm_groups,
        sample_size=32,
    )  # fmt: skip


def build_text_encoder(config: LatentDemoConfig, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    from transformers import CLIPTextConfig, CLIPTextModel

    text = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=config.text_width, intermediate_size=4 * config.text_width,
        num_hidden_layers=config.text_layers, num_attention_heads=config.text_heads,
        max_position_embeddings=tokenizer.model_max_length, projection_dim=config.text_width,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return CLIPTextModel(text)


def build_unet(config: LatentDemoConfig) -> UNet:
    """Cross-attention at every resolution but the lowest (which has the mid block's attention)."""
    from diffusers import UNet2DConditionModel

    n = len(config.unet_channels)
    down = ("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1)
    return UNet2DConditionModel(
        sample_size=config.latent_resolution, in_channels=config.latent_channels,
        out_channels=config.latent_channels, block_out_channels=config.unet_channels,
        down_block_types=down, up_block_types=up, layers_per_block=config.unet_layers_per_block,
        cross_attention_dim=config.text_width, attention_head_dim=config.unet_heads,
        norm_num_groups=config.norm_groups,
    )  # fmt: skip


def build_scheduler() -> Scheduler:
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_CONFIG)


def assemble_pipeline(
    *, vae: VAE, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, unet: UNet
) -> Pipeline:
    """The parts as a StableDiffusionPipeline without safety checker (no such model exists for the demo)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=build_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


def save_pipeline(pipeline: Pipeline, folder: str | Path, *, half: bool = True) -> Path:
    """Write the pipeline folder; ``half``: the VAE and UNet in fp16 (half the bytes; diffusers loads them
    as fp32). The text encoder stays fp32: transformers 5 keeps a file's dtype, and an fp16 encoder
    feeding an fp32 UNet fails on the CPU (it is 2% of the bytes)."""
    from skiptune.demo.training.latent.prompts import write_vocab_files

    folder = Path(folder)
    if half:
        for part in (pipeline.vae, pipeline.unet):
            part.half()
    try:
        pipeline.save_pretrained(folder, safe_serialization=True)
    finally:
        if half:
            for part in (pipeline.vae, pipeline.unet):
                part.float()
    write_vocab_files(folder / "tokenizer")
    return folder


def folder_bytes(folder: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def check_pipeline_folder(folder: str | Path) -> Path:
    """``folder`` if it holds a pipeline's parts, else one line naming what is missing."""
    folder = Path(folder)
    missing = [name for name in PIPELINE_FILES if not (folder / name).exists()]
    if missing:
        raise SkiptuneError(
            f"{str(folder)!r} is not a diffusers pipeline folder (missing {', '.join(missing)}); "
            "train one with `python -m skiptune.demo.training.latent --out DIR`"
        )
    index = json.loads((folder / "model_index.json").read_text())
    if index.get("_class_name") != "StableDiffusionPipeline":
        raise SkiptuneError(
            f"{str(folder)!r} holds a {index.get('_class_name')!r}; expected a StableDiffusionPipeline"
        )
    return folder
