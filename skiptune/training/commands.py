"""The work behind ``skiptune train <what>``: each returns a JSON-able log of what it did."""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from skiptune.devices import resolve_device
from skiptune.errors import SkiptuneError

LogFn = Callable[[dict[str, Any]], None]


def _int_tuple(text: str, *, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise SkiptuneError(f"bad {what} {text!r}: expected comma-separated integers like 1,2,2") from None


def _environment(device: torch.device) -> dict[str, Any]:
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": str(device), "card": card, "torch": torch.__version__}


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_diffusion(args: argparse.Namespace, emit: LogFn) -> dict[str, Any]:
    from skiptune.training.data import load_padded
    from skiptune.training.diffusion import (
        DiffusionTrainConfig,
        UNetConfig,
        build_net,
        save_ema_checkpoint,
        train_diffusion,
    )

    device = resolve_device(args.device)
    unet = UNetConfig(
        model_channels=args.model_channels,
        channel_mult=_int_tuple(args.channel_mult, what="--channel-mult"),
        num_blocks=args.num_blocks,
        attn_resolutions=_int_tuple(args.attn_resolutions, what="--attn-resolutions"),
        dropout=args.dropout,
    )
    config = DiffusionTrainConfig(
        unet=unet,
        steps=args.steps,
        max_seconds=args.max_seconds,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_warmup_images=args.lr_warmup_images,
        ema_halflife_images=args.ema_halflife_images,
        xflip=not args.no_xflip,
        seed=args.seed,
        log_every=args.log_every,
        checkpoint_every_seconds=args.checkpoint_every_seconds,
        resume_images=args.resume_images,
    )
    images, _ = load_padded("train", root=args.data)
    params = sum(p.numel() for p in build_net(unet).parameters())
    emit({"parameters": params, "images": int(images.shape[0]), **_environment(device)})
    init = None
    if args.init:
        from skiptune.nets.checkpoints import load_checkpoint

        init = load_checkpoint(args.init)
    result = train_diffusion(
        images,
        init=init,
        config=config,
        device=device,
        log=emit,
        checkpoint=lambda ema: save_ema_checkpoint(ema, args.out, unet=unet),
    )
    path = save_ema_checkpoint(result.ema, args.out, unet=unet)
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
        **_environment(device),
    }


def run_classifier(args: argparse.Namespace, emit: LogFn) -> dict[str, Any]:
    from skiptune.objectives.classifier import save_classifier
    from skiptune.training.classifier import ClassifierTrainConfig, accuracy, train_classifier
    from skiptune.training.data import load_padded

    device = resolve_device(args.device)
    config = ClassifierTrainConfig(
        width=args.width, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed
    )
    images, labels = load_padded("train", root=args.data)
    test_images, test_labels = load_padded("test", root=args.data)
    result = train_classifier(images, labels, config=config, device=device, log=emit)
    test_acc = accuracy(result.model, test_images, test_labels)
    train_acc = accuracy(result.model, images[:10_000], labels[:10_000])
    save_classifier(result.model, args.out, metadata={"test_accuracy": test_acc, "steps": result.steps})
    return {
        "what": "classifier",
        "out": args.out,
        "sha256": _sha256(args.out),
        "test_accuracy": test_acc,
        "train_accuracy_first_10k": train_acc,
        "steps": result.steps,
        "seconds": round(result.seconds, 1),
        "feature_dim": result.model.feature_dim,
        "config": result.config,
        "losses": result.losses,
        **_environment(device),
    }


def run_reference_stats(args: argparse.Namespace, emit: LogFn) -> dict[str, Any]:
    from skiptune.objectives.classifier import load_demo_extractor
    from skiptune.training.data import load_padded
    from skiptune.training.reference_stats import save_reference_stats, split_stats

    device = resolve_device(args.device)
    extractor = load_demo_extractor(device, path=args.classifier)
    images, _ = load_padded(args.split, root=args.data)
    start = time.perf_counter()
    stats = split_stats(extractor, images, batch_size=args.batch_size)
    info = save_reference_stats(stats, args.out, extractor=extractor, source=f"Fashion-MNIST {args.split}")
    emit({"count": stats.count, "seconds": round(time.perf_counter() - start, 1)})
    return {"what": "reference-stats", "out": args.out, "split": args.split, **info, **_environment(device)}


def run_evaluate(args: argparse.Namespace, emit: LogFn) -> dict[str, Any]:
    from skiptune.training.evaluate import evaluate_demo

    device = resolve_device(args.device)
    result = evaluate_demo(
        model=args.model,
        reference=args.reference,
        classifier=args.classifier,
        data=args.data,
        sampler=args.sampler,
        nfe=args.nfe,
        samples=args.samples,
        batch_size=args.batch_size,
        seed=args.seed,
        device=device,
        log=emit,
    )
    return {"what": "evaluate", **result, **_environment(device)}
