"""The latent demo's VAE: diffusers' AutoencoderKL trained on reconstruction plus a small KL term, then
the dataset's posterior (mean, std) once, so the denoiser's training draws latents without the encoder.

loss = mean (x_hat - x)^2 + kl_weight * mean KL(q(z|x) || N(0, I))  (per element, x in [-1, 1]).
No perceptual or adversarial term (no pretrained network exists here); the latent is 4x16x16 for a
32x32 image, so reconstruction needs no help from them. The scaling factor diffusers applies
(``vae.config.scaling_factor``) is set, as for Stable Diffusion, to 1 / std of the training latents.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from skiptune.demo.training.data import EpochSampler, random_xflip, to_unit_range
from skiptune.demo.training.device import autocast
from skiptune.demo.training.latent.components import VAE
from skiptune.demo.training.steps import LogFn, StepLog


@dataclass(frozen=True)
class VAETrainConfig:
    steps: int = 100_000
    max_seconds: float | None = None
    batch_size: int = 256
    lr: float = 1e-3
    kl_weight: float = 1e-4
    seed: int = 0
    log_every: int = 200


@dataclass
class VAETrainResult:
    vae: VAE
    steps: int
    seconds: float
    losses: list[dict[str, float]]
    config: dict[str, Any]


def vae_loss(vae: VAE, batch: torch.Tensor, *, kl_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss, reconstruction MSE) of one batch in [-1, 1]; the latent is drawn from q(z|x)."""
    posterior = vae.encode(batch).latent_dist
    recon = vae.decode(posterior.sample()).sample
    mse = (recon.float() - batch).pow(2).mean()
    kl = posterior.kl().mean() / posterior.mean[0].numel()  # diffusers sums over the latent's elements
    return mse + kl_weight * kl, mse.detach()


def train_vae(
    vae: VAE, images: torch.Tensor, *, config: VAETrainConfig, device: torch.device,
    log: LogFn | None = None,
) -> VAETrainResult:  # fmt: skip
    """Train ``vae`` on uint8 ``[N,1,32,32]`` images until ``steps`` or ``max_seconds``; Adam, x-flips."""
    gen = torch.Generator(device=device).manual_seed(config.seed)
    vae = vae.to(device).train()
    data = images.to(device)
    sampler = EpochSampler(data.shape[0], config.batch_size, device=device, generator=gen)
    opt = torch.optim.Adam(vae.parameters(), lr=config.lr)
    steps = StepLog(
        steps=config.steps, max_seconds=config.max_seconds, log_every=config.log_every, log=log,
        names=("loss", "mse"),
    )  # fmt: skip
    while steps.running():
        batch = random_xflip(to_unit_range(data[sampler.next()]), generator=gen)
        with autocast(device):
            loss, mse = vae_loss(vae, batch, kl_weight=config.kl_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if steps.add(loss, mse):
            break
    vae = vae.eval().requires_grad_(False)
    return VAETrainResult(
        vae=vae, steps=steps.step, seconds=steps.seconds, losses=steps.entries, config=asdict(config)
    )


@torch.no_grad()
def encode_dataset(
    vae: VAE, images: torch.Tensor, *, device: torch.device, batch_size: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior (mean, std) ``[N,C,h,w]`` float32 on ``device`` of uint8 ``images``, in fp32."""
    means, stds = [], []
    for chunk in images.split(batch_size):
        dist = vae.encode(to_unit_range(chunk.to(device))).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def set_scaling_factor(vae: VAE, mean: torch.Tensor, std: torch.Tensor, *, seed: int = 0) -> float:
    """Set ``vae.config.scaling_factor`` to 1 / std of latents drawn from the posteriors; return it."""
    gen = torch.Generator(device=mean.device).manual_seed(seed)
    draws = mean + std * torch.randn(mean.shape, device=mean.device, generator=gen)
    factor = float(1.0 / draws.std())
    vae.register_to_config(scaling_factor=factor)
    return factor


@torch.no_grad()
def reconstruction_mse(vae: VAE, images: torch.Tensor, *, device: torch.device) -> float:
    """Mean squared error in [-1, 1] of decoding the posterior mean (the held-out split's, say)."""
    total, count = 0.0, 0
    for chunk in images.split(1000):
        x = to_unit_range(chunk.to(device))
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample.float()
        total += float((recon - x).pow(2).sum())
        count += x.numel()
    return total / count


@torch.no_grad()
def decode_roundtrip(vae: VAE, images: torch.Tensor, *, device: torch.device) -> torch.Tensor:
    """uint8 images -> posterior mean -> decoded uint8 (as the pipeline quantises): the VAE's own floor."""
    out = []
    for chunk in images.split(1000):
        x = to_unit_range(chunk.to(device))
        y = vae.decode(vae.encode(x).latent_dist.mean).sample.float()
        out.append(((y / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).cpu())
    return torch.cat(out)
