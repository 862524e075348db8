"""The latent demo's UNet and text encoder, trained together on the VAE's latents of Fashion-MNIST.

Each example's prompt is its class in a random template (``prompts.training_prompts``), replaced by the
empty prompt with probability ``p_uncond`` so one network also learns the unconditional model that
classifier-free guidance needs (diffusers' default negative prompt is that same empty prompt). Prompts
are tokenized exactly as ``StableDiffusionPipeline`` does (padded to the tokenizer's max length, no
attention mask) and the UNet attends to the text encoder's last hidden states, as in SD 1.x. The few
distinct prompts go through the text encoder once per step. AdamW with a linear warm-up, gradient
clipping, bf16 autocast on CUDA, and an EMA of both networks (EDM's half-life in images) that is what
gets saved.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from skiptune.demo.training.data import EpochSampler
from skiptune.demo.training.device import autocast
from skiptune.demo.training.ema import ema_beta, ema_update
from skiptune.demo.training.latent.components import UNet
from skiptune.demo.training.latent.prompts import CLASS_NAMES, TEMPLATES, UNCONDITIONAL, training_prompts
from skiptune.demo.training.latent.vp_loss import VPEpsilonLoss
from skiptune.demo.training.steps import LogFn, StepLog

if TYPE_CHECKING:
    from transformers import CLIPTextModel, CLIPTokenizer


@dataclass(frozen=True)
class DenoiserTrainConfig:
    steps: int = 1_000_000
    max_seconds: float | None = None
    batch_size: int = 512
    lr: float = 5e-4
    lr_warmup_images: int = 100_000
    weight_decay: float = 0.01
    p_uncond: float = 0.1
    min_snr_gamma: float | None = 5.0
    ema_halflife_images: int = 250_000
    ema_rampup_ratio: float | None = 0.05
    seed: int = 0
    log_every: int = 200


@dataclass
class DenoiserTrainResult:
    unet: UNet  # the EMA weights
    text_encoder: CLIPTextModel
    steps: int
    images_seen: int
    seconds: float
    losses: list[dict[str, float]]
    config: dict[str, Any]


def prompt_ids(tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids [P, L] as ``StableDiffusionPipeline.encode_prompt`` makes them."""
    enc = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt")  # fmt: skip
    return enc.input_ids


def _prompt_index(labels: torch.Tensor, *, p_uncond: float, generator: torch.Generator) -> torch.Tensor:
    """Row of ``training_prompts() + [UNCONDITIONAL]`` for each label: a random template, or dropped."""
    t = len(TEMPLATES)
    index = labels * t + torch.randint(0, t, labels.shape, device=labels.device, generator=generator)
    drop = torch.rand(labels.shape, device=labels.device, generator=generator) < p_uncond
    return torch.where(drop, torch.full_like(index, len(CLASS_NAMES) * t), index)


class _Pair(nn.Module):
    """The two trained networks as one module (one optimizer, one EMA)."""

    def __init__(self, unet: UNet, text_encoder: CLIPTextModel) -> None:
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder

    def loss(self, ids: torch.Tensor, rows: torch.Tensor, z0: torch.Tensor, vp: VPEpsilonLoss,
             gen: torch.Generator) -> torch.Tensor:  # fmt: skip
        embeddings = self.text_encoder(ids)[0]  # [P, L, W]: every distinct prompt once
        return vp(self.unet, z0, embeddings[rows], generator=gen).mean()


def train_denoiser(
    unet: UNet, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, *,
    latents: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor, scaling_factor: float,
    abar: torch.Tensor, config: DenoiserTrainConfig, device: torch.device, log: LogFn | None = None,
) -> DenoiserTrainResult:  # fmt: skip
    """Train on posterior (mean, std) ``latents`` [N,C,h,w] with int64 ``labels`` [N] (same device)."""
    torch.manual_seed(config.seed)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    pair = _Pair(unet, text_encoder).to(device).train()
    ema = copy.deepcopy(pair).eval().requires_grad_(False)
    ids = prompt_ids(tokenizer, [p for p, _ in training_prompts()] + [UNCONDITIONAL]).to(device)
    vp = VPEpsilonLoss(abar.to(device), min_snr_gamma=config.min_snr_gamma)
    mean, std = latents
    sampler = EpochSampler(mean.shape[0], config.batch_size, device=device, generator=gen)
    opt = torch.optim.AdamW(pair.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = StepLog(steps=config.steps, max_seconds=config.max_seconds, log_every=config.log_every, log=log)
    seen = 0
    while steps.running():
        idx = sampler.next()
        noise = torch.randn(mean[idx].shape, device=device, generator=gen)
        z0 = (mean[idx] + std[idx] * noise) * scaling_factor
        rows = _prompt_index(labels[idx], p_uncond=config.p_uncond, generator=gen)
        for g in opt.param_groups:
            g["lr"] = config.lr * min(seen / max(config.lr_warmup_images, 1), 1.0)
        with autocast(device):
            loss = pair.loss(ids, rows, z0, vp, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(pair.parameters(), 1.0)
        opt.step()
        seen += z0.shape[0]
        beta = ema_beta(batch_size=z0.shape[0], images_seen=seen, halflife_images=config.ema_halflife_images,
                        rampup_ratio=config.ema_rampup_ratio)  # fmt: skip
        ema_update(ema, pair, beta=beta)
        if steps.add(loss, images=seen):
            break
    return DenoiserTrainResult(
        unet=ema.unet, text_encoder=ema.text_encoder, steps=steps.step, images_seen=seen,
        seconds=steps.seconds, losses=steps.entries, config=asdict(config),
    )  # fmt: skip
