"""The demo feature extractor's recipe: FashionClassifier on padded Fashion-MNIST.

AdamW with a one-cycle learning rate, label smoothing, and light augmentation (x-flips and random
shifts of up to 2 px, which the 2 px black border makes harmless); about 93-94% test accuracy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from skiptune.demo.classifier import FashionClassifier
from skiptune.demo.training.data import EpochSampler, random_xflip
from skiptune.demo.training.device import autocast
from skiptune.errors import SkiptuneError

LogFn = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class ClassifierTrainConfig:
    width: int = 32
    epochs: float = 15.0
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    seed: int = 0
    log_every: int = 100


@dataclass
class ClassifierTrainResult:
    model: FashionClassifier
    steps: int
    seconds: float
    losses: list[dict[str, float]]
    config: dict[str, Any]


def random_shift(images: torch.Tensor, *, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` px in x and y (zero fill): one crop per batch row."""
    n, c, h, w = images.shape
    padded = nn.functional.pad(images, (max_shift,) * 4)
    off = torch.randint(0, 2 * max_shift + 1, (n, 2), device=images.device, generator=generator)
    rows = (off[:, 0, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (off[:, 1, None] + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    chan = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


@torch.no_grad()
def accuracy(
    model: FashionClassifier, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 1000
) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on uint8 images."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device)
        y = labels[start : start + batch_size].to(device)
        correct += int((model(x).argmax(1) == y).sum())
    return correct / max(images.shape[0], 1)


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    config: ClassifierTrainConfig,
    device: torch.device,
    log: LogFn | None = None,
) -> ClassifierTrainResult:
    """Train on uint8 ``[N,1,32,32]`` images with int64 labels; returns the model in eval mode."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[0] != labels.shape[0]:
        raise SkiptuneError(
            f"expected uint8 images [N,1,32,32] and N labels, "
            f"got {tuple(images.shape)} and {tuple(labels.shape)}"
        )
    torch.manual_seed(config.seed)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed shapes: let cuDNN pick its fastest kernels
    gen = torch.Generator(device=device).manual_seed(config.seed)
    model = FashionClassifier(width=config.width).to(device).train()
    data, targets = images.to(device), labels.to(device)
    steps = max(1, round(config.epochs * data.shape[0] / config.batch_size))
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps, pct_start=0.2)
    sampler = EpochSampler(data.shape[0], config.batch_size, device=device, generator=gen)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    losses: list[dict[str, float]] = []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        idx = sampler.next()
        x = random_shift(random_xflip(data[idx], generator=gen), max_shift=2, generator=gen)
        with autocast(device):
            loss = loss_fn(model(x).float(), targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % config.log_every == 0 or step == steps:
            entry = {
                "step": step,
                "seconds": round(time.perf_counter() - start, 2),
                "loss": float(loss.detach()),
            }
            losses.append(entry)
            if log:
                log(entry)
    model.eval().requires_grad_(False)
    return ClassifierTrainResult(
        model=model, steps=steps, seconds=time.perf_counter() - start, losses=losses, config=asdict(config)
    )
