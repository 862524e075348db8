"""Tiny Stable Diffusion pipeline folders for tests: random weights, a tiny CLIP vocabulary, saved by
diffusers' own ``save_pretrained`` (a real folder, loaded back by path)."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import torch

PROMPTS = ["a cat on a mat", "a dog", "the sun at noon"]


def tiny_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP BPE vocabulary over lower-case letters and two merges."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in string.ascii_lowercase:
            vocab[c + suffix] = len(vocab)
    merges = [("a", "t</w>"), ("o", "n</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    return vocab, merges


def tiny_tokenizer() -> Any:
    """A CLIP tokenizer of :func:`tiny_vocab`, 8 tokens long."""
    from transformers import CLIPTokenizer

    vocab, merges = tiny_vocab()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=8)


def tiny_vae(latent_channels: int = 4) -> Any:
    """A 2-level AutoencoderKL: 16x16 RGB images <-> 8x8 latents."""
    import diffusers

    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16),
        latent_channels=latent_channels, norm_num_groups=8, layers_per_block=1, sample_size=16,
    )  # fmt: skip


def tiny_components(
    *, prediction_type: str = "epsilon", seed: int = 0, vae_latent_channels: int = 4
) -> dict[str, Any]:
    """UNet2DConditionModel + AutoencoderKL + CLIPTextModel + tokenizer + Euler scheduler, tiny."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))  # fmt: skip
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16, attention_head_dim=4,
        norm_num_groups=8,
    )  # fmt: skip
    _randomize(unet)  # diffusers zero-initialises output layers: make every wire matter
    vae = tiny_vae(vae_latent_channels)
    scheduler = diffusers.EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        prediction_type=prediction_type, steps_offset=1,
    )  # fmt: skip
    return dict(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer, scheduler=scheduler)


def _randomize(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 1 / max(p[0].numel(), 1) ** 0.5)
            elif "norm" not in name:
                p.normal_(0, 0.1)


def make_pipeline_folder(root: Path, **kwargs: Any) -> Path:
    """A StableDiffusionPipeline of tiny random components saved at ``root``."""
    import diffusers

    pipe = diffusers.StableDiffusionPipeline(
        **tiny_components(**kwargs),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(root))
    return root


def load_pipeline(root: Path, scheduler: str = "euler") -> Any:
    """diffusers' own pipeline from the folder, with the named scheduler built from its config."""
    import diffusers

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(root))
    cls = {"euler": diffusers.EulerDiscreteScheduler, "dpmpp_2m": diffusers.DPMSolverMultistepScheduler}[
        scheduler
    ]
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class _RGBFeatures(torch.nn.Module):
    """4x4 average pooling of 16x16 RGB [0, 1] pixels through a fixed random 48 -> 6 linear map."""

    def __init__(self) -> None:
        super().__init__()
        self.feature_dim = 6
        self.input_channels = 3
        self.proj = torch.nn.Linear(48, 6, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(6, 48, generator=torch.Generator().manual_seed(5)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.nn.functional.avg_pool2d(x.float() / 255.0, 4).flatten(1))


def make_cli_assets(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """A tiny SD folder, a prompts file, a TorchScript extractor of 16x16 RGB images, reference stats."""
    import warnings

    import numpy as np

    from skiptune.objectives.features import create_extractor
    from skiptune.objectives.reference import ReferenceStats, save_reference

    folder = make_pipeline_folder(tmp_path / "tiny-sd")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    extractor = tmp_path / "features.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(_RGBFeatures()), str(extractor))
    ext = create_extractor(f"torchscript:{extractor}")
    images = torch.randint(
        0, 256, (64, 3, 16, 16), generator=torch.Generator().manual_seed(1), dtype=torch.uint8
    )
    feats = ext(images).double().numpy()
    reference = tmp_path / "reference.npz"
    stats = ReferenceStats(mu=feats.mean(0), sigma=np.cov(feats, rowvar=False), count=64, resolution=16,
                           extractor=ext.name, channels=3)  # fmt: skip
    save_reference(stats, reference)
    return folder, prompts, extractor, reference


def make_clip_folder(root: Path, *, seed: int = 0) -> Path:
    """A tiny random CLIPModel (8-dim projections, 32x32 input images) with the tiny tokenizer and a
    CLIPImageProcessor, saved by transformers' own ``save_pretrained`` at ``root``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text = dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=8, bos_token_id=0, eos_token_id=1,
                pad_token_id=1)  # fmt: skip
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8)  # fmt: skip
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(str(root))
    tokenizer.save_pretrained(str(root))
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(str(root))
    return root
