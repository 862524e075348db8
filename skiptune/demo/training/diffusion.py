"""The demo diffusion model's recipe: a small SongUNet in EDMPrecond, trained with the EDM loss.

Images are Fashion-MNIST padded to 32x32 and scaled to [-1, 1]; Adam with a linear learning-rate
warm-up, optional x-flips, bf16 autocast on CUDA, and an EMA (half-life in images, as EDM) that is
what gets saved, in fp16 to keep the bundled asset small.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from skiptune.demo.training.data import EpochSampler, random_xflip, to_unit_range
from skiptune.demo.training.device import autocast
from skiptune.demo.training.edm_loss import EDMLoss
from skiptune.demo.training.ema import ema_beta, ema_update
from skiptune.demo.training.steps import LogFn, StepLog
from skiptune.errors import SkiptuneError
from skiptune.nets.edm import EDMPrecond


@dataclass(frozen=True)
class UNetConfig:
    """SongUNet (DDPM++ flavour) size knobs; the rest are EDM's defaults."""

    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_blocks: int = 1
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = 0.1

    def precond_kwargs(self, *, resolution: int = 32, channels: int = 1) -> dict[str, Any]:
        """Constructor keyword arguments of :class:`EDMPrecond` (also the checkpoint's ``config``)."""
        return dict(
            img_resolution=resolution,
            img_channels=channels,
            label_dim=0,
            use_fp16=False,
            sigma_min=0.0,
            sigma_max=math.inf,
            sigma_data=0.5,
            model_type="SongUNet",
            model_channels=self.model_channels,
            channel_mult=list(self.channel_mult),
            num_blocks=self.num_blocks,
            attn_resolutions=list(self.attn_resolutions),
            dropout=self.dropout,
            embedding_type="positional",
            encoder_type="standard",
            decoder_type="standard",
            channel_mult_noise=1,
            resample_filter=[1, 1],
        )


@dataclass(frozen=True)
class DiffusionTrainConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    steps: int = 200_000
    max_seconds: float | None = None
    batch_size: int = 256
    lr: float = 1e-3
    lr_warmup_images: int = 200_000
    ema_halflife_images: int = 500_000
    ema_rampup_ratio: float | None = 0.05
    xflip: bool = True
    seed: int = 0
    log_every: int = 100
    checkpoint_every_seconds: float | None = None
    resume_images: int = 0  # images the --init weights have already seen (EMA ramp-up only)


@dataclass
class DiffusionTrainResult:
    ema: nn.Module
    steps: int
    images_seen: int
    seconds: float
    losses: list[dict[str, float]]
    config: dict[str, Any]


def build_net(unet: UNetConfig) -> EDMPrecond:
    return EDMPrecond(**unet.precond_kwargs())


def save_ema_checkpoint(ema: nn.Module, path: str | Path, *, unet: UNetConfig) -> Path:
    """fp16 weights (half the bytes; the denoiser is rebuilt in fp32 when loaded) via our .pt format."""
    from skiptune.nets.checkpoints import save_checkpoint

    half = copy.deepcopy(ema).to("cpu").half()
    return save_checkpoint(half, path, config=unet.precond_kwargs())


def _check(images: torch.Tensor, config: DiffusionTrainConfig) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 32 or images.shape[-2] != 32:
        raise SkiptuneError(
            f"training images must be uint8 [N,1,32,32], got {images.dtype} {tuple(images.shape)}"
        )
    if config.batch_size < 1 or config.steps < 1:
        raise SkiptuneError(
            f"batch size and steps must be positive, got {config.batch_size} and {config.steps}"
        )


def _train_step(
    net: nn.Module, opt: torch.optim.Optimizer, batch: torch.Tensor, *, lr: float, device: torch.device
) -> torch.Tensor:
    for g in opt.param_groups:
        g["lr"] = lr
    with autocast(device):
        loss = EDMLoss()(net, batch).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    for p in net.parameters():  # EDM's guard: one bad batch must not poison the weights
        if p.grad is not None:
            torch.nan_to_num(p.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=p.grad)
    opt.step()
    return loss.detach()


def _initial_net(config: DiffusionTrainConfig, init: nn.Module | None, device: torch.device) -> nn.Module:
    net = build_net(config.unet)
    if init is not None:
        try:
            net.load_state_dict({k: v.float() for k, v in init.state_dict().items()}, strict=True)
        except RuntimeError as exc:
            raise SkiptuneError(
                f"the --init checkpoint does not match the asked network size ({exc}); "
                "pass the same --model-channels/--channel-mult/--num-blocks/--attn-resolutions"
            ) from None
    return net.to(device).train()


def train_diffusion(
    images: torch.Tensor,
    *,
    config: DiffusionTrainConfig,
    device: torch.device,
    log: LogFn | None = None,
    checkpoint: Callable[[nn.Module], object] | None = None,
    init: nn.Module | None = None,
) -> DiffusionTrainResult:
    """Train from uint8 ``[N,1,32,32]`` images; stop at ``steps`` or ``max_seconds``, whichever first.

    ``init`` (weights to continue from, e.g. an earlier EMA) restarts Adam and the lr warm-up; the EMA
    ramp-up counts ``config.resume_images`` as already seen.
    """
    _check(images, config)
    torch.manual_seed(config.seed)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed shapes: let cuDNN pick its fastest kernels
    gen = torch.Generator(device=device).manual_seed(config.seed)
    net = _initial_net(config, init, device)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    data = images.to(device)
    sampler = EpochSampler(data.shape[0], config.batch_size, device=device, generator=gen)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, betas=(0.9, 0.999), eps=1e-8)
    steps = StepLog(steps=config.steps, max_seconds=config.max_seconds, log_every=config.log_every, log=log)
    seen, last_ckpt = 0, steps.start
    while steps.running():
        batch = to_unit_range(data[sampler.next()])
        if config.xflip:
            batch = random_xflip(batch, generator=gen)
        lr = config.lr * min(seen / max(config.lr_warmup_images, 1), 1.0)  # linear warm-up (EDM)
        loss = _train_step(net, opt, batch, lr=lr, device=device)
        seen += batch.shape[0]
        beta = ema_beta(
            batch_size=batch.shape[0],
            images_seen=config.resume_images + seen,
            halflife_images=config.ema_halflife_images,
            rampup_ratio=config.ema_rampup_ratio,
        )
        ema_update(ema, net, beta=beta)
        done = steps.add(loss, images=seen)
        every = config.checkpoint_every_seconds
        if checkpoint and every and time.perf_counter() - last_ckpt > every:
            checkpoint(ema)
            last_ckpt = time.perf_counter()
        if done:
            break
    return DiffusionTrainResult(
        ema=ema, steps=steps.step, images_seen=seen, seconds=steps.seconds, losses=steps.entries,
        config=asdict(config),
    )  # fmt: skip
