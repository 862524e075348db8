"""The work behind ``skiptune train <what>``: one frozen dataclass per command, each run returns a
JSON-able log of what it did. ``options.py`` builds these from the command line; Python callers build
them directly."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from skiptune.demo.training.classifier import ClassifierTrainConfig
from skiptune.demo.training.diffusion import DiffusionTrainConfig
from skiptune.demo.training.steps import LogFn
from skiptune.devices import resolve_device


@dataclass(frozen=True)
class Where:
    """Where every command reads Fashion-MNIST from (None: the default folder) and runs."""

    data: str | None = None
    device: str = "auto"


@dataclass(frozen=True)
class DiffusionCommand:
    """Train the demo denoiser and write its fp16 EMA weights to ``out`` (from ``init`` if given)."""

    out: Path
    config: DiffusionTrainConfig
    init: Path | None = None
    where: Where = Where()


@dataclass(frozen=True)
class ClassifierCommand:
    """Train the fmnist-classifier and write its weights to ``out``."""

    out: Path
    config: ClassifierTrainConfig
    where: Where = Where()


@dataclass(frozen=True)
class ReferenceStatsCommand:
    """Write the statistics of a Fashion-MNIST split in the classifier's space (bundled one if None)."""

    out: Path
    classifier: Path | None = None
    split: str = "train"
    batch_size: int = 1000
    where: Where = Where()


@dataclass(frozen=True)
class EvaluateCommand:
    """The model card's numbers: accuracy, FD floor and (with ``model``) the FD at one sampler x NFE."""

    model: Path | None = None
    reference: Path | None = None
    classifier: Path | None = None
    sampler: str = "heun"
    nfe: int = 35
    samples: int = 10_000
    batch_size: int = 500
    seed: int = 0
    where: Where = Where()


TrainCommand = DiffusionCommand | ClassifierCommand | ReferenceStatsCommand | EvaluateCommand


def run_command(command: TrainCommand, emit: LogFn) -> dict[str, Any]:
    """Run ``command``; ``emit`` receives progress entries, the return value is the whole log."""
    device = resolve_device(command.where.device)
    if isinstance(command, DiffusionCommand):
        log = run_diffusion(command, emit, device)
    elif isinstance(command, ClassifierCommand):
        log = run_classifier(command, emit, device)
    elif isinstance(command, ReferenceStatsCommand):
        log = run_reference_stats(command, emit, device)
    else:
        log = run_evaluate(command, emit, device)
    return {**log, **_environment(device)}


def _environment(device: torch.device) -> dict[str, Any]:
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": str(device), "card": card, "torch": torch.__version__}


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_diffusion(command: DiffusionCommand, emit: LogFn, device: torch.device) -> dict[str, Any]:
    from skiptune.demo.training.data import load_padded
    from skiptune.demo.training.diffusion import build_net, save_ema_checkpoint, train_diffusion

    unet = command.config.unet
    images, _ = load_padded("train", root=command.where.data)
    params = sum(p.numel() for p in build_net(unet).parameters())
    emit({"parameters": params, "images": int(images.shape[0]), **_environment(device)})
    init = None
    if command.init is not None:
        from skiptune.nets.checkpoints import load_checkpoint

        init = load_checkpoint(command.init)
    result = train_diffusion(
        images,
        init=init,
        config=command.config,
        device=device,
        log=emit,
        checkpoint=lambda ema: save_ema_checkpoint(ema, command.out, unet=unet),
    )
    path = save_ema_checkpoint(result.ema, command.out, unet=unet)
    return {
        "what": "diffusion",
        "out": str(path),
        "bytes": path.stat().st_size,
        "sha256": _sha256(path),
        "parameters": params,
        "steps": result.steps,
        "images_seen": result.images_seen,
        "seconds": round(result.seconds, 1),
        "steps_per_second": round(result.steps / result.seconds, 2),
        "final_loss": result.losses[-1]["loss"],
        "config": result.config,
        "losses": result.losses,
    }


def run_classifier(command: ClassifierCommand, emit: LogFn, device: torch.device) -> dict[str, Any]:
    from skiptune.demo.classifier import save_classifier
    from skiptune.demo.training.classifier import accuracy, train_classifier
    from skiptune.demo.training.data import load_padded

    images, labels = load_padded("train", root=command.where.data)
    test_images, test_labels = load_padded("test", root=command.where.data)
    result = train_classifier(images, labels, config=command.config, device=device, log=emit)
    test_acc = accuracy(result.model, test_images, test_labels)
    train_acc = accuracy(result.model, images[:10_000], labels[:10_000])
    save_classifier(result.model, command.out, metadata={"test_accuracy": test_acc, "steps": result.steps})
    return {
        "what": "classifier",
        "out": str(command.out),
        "sha256": _sha256(command.out),
        "test_accuracy": test_acc,
        "train_accuracy_first_10k": train_acc,
        "steps": result.steps,
        "seconds": round(result.seconds, 1),
        "feature_dim": result.model.feature_dim,
        "config": result.config,
        "losses": result.losses,
    }


def run_reference_stats(command: ReferenceStatsCommand, emit: LogFn, device: torch.device) -> dict[str, Any]:
    from skiptune.demo.classifier import load_demo_extractor
    from skiptune.demo.training.reference_stats import write_split_reference

    extractor = load_demo_extractor(device, path=command.classifier)
    start = time.perf_counter()
    info = write_split_reference(
        extractor, command.split, command.out, root=command.where.data, batch_size=command.batch_size
    )
    emit({"count": info["count"], "seconds": round(time.perf_counter() - start, 1)})
    return {"what": "reference-stats", "out": str(command.out), "split": command.split, **info}


def run_evaluate(command: EvaluateCommand, emit: LogFn, device: torch.device) -> dict[str, Any]:
    from skiptune.demo.training.evaluate import evaluate_demo

    result = evaluate_demo(
        model=command.model,
        reference=command.reference,
        classifier=command.classifier,
        data=command.where.data,
        sampler=command.sampler,
        nfe=command.nfe,
        samples=command.samples,
        batch_size=command.batch_size,
        seed=command.seed,
        device=device,
        log=emit,
    )
    return {"what": "evaluate", **result}
