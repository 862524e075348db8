"""The latent demo's recipe end to end: VAE -> latents -> UNet + text encoder -> folder -> numbers."""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from skiptune.demo.training.latent.components import LatentDemoConfig
from skiptune.demo.training.latent.denoiser import DenoiserTrainConfig
from skiptune.demo.training.latent.evaluate import SampleSetting
from skiptune.demo.training.latent.vae import VAETrainConfig

if TYPE_CHECKING:
    from skiptune.objectives.frechet import FeatureStats

EmitFactory = Callable[[str], Callable[[dict[str, Any]], None]]
SMOKE_IMAGES = 512


@dataclass(frozen=True)
class LatentRecipe:
    out: Path
    sizes: LatentDemoConfig = field(default_factory=LatentDemoConfig)
    vae: VAETrainConfig = field(default_factory=VAETrainConfig)
    denoiser: DenoiserTrainConfig = field(default_factory=DenoiserTrainConfig)
    settings: tuple[SampleSetting, ...] = (SampleSetting(),)
    eval_samples: int = 10_000
    eval_batch_size: int = 1000
    limit_images: int | None = None  # train on the first N images only (smoke runs)
    data: str | None = None
    device: str = "auto"
    classifier: Path | None = None
    reference: Path | None = None
    stats_out: Path | None = None  # also write each evaluation's feature statistics here (.npz)

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, settings: list[SampleSetting]) -> LatentRecipe:
        recipe = cls(
            out=Path(args.out), settings=tuple(settings), eval_samples=args.eval_samples,
            eval_batch_size=args.eval_batch_size, data=args.data, device=args.device,
            classifier=Path(args.classifier) if args.classifier else None,
            reference=Path(args.reference) if args.reference else None,
            stats_out=Path(args.stats) if args.stats else None,
            vae=VAETrainConfig(max_seconds=args.vae_seconds, batch_size=args.vae_batch_size, seed=args.seed),
            denoiser=DenoiserTrainConfig(max_seconds=args.denoiser_seconds, batch_size=args.batch_size,
                                         lr=args.lr, seed=args.seed),
        )  # fmt: skip
        return recipe.smoke() if args.smoke else recipe

    def smoke(self) -> LatentRecipe:
        """Tiny networks, few images and steps, few samples: the whole path in about a minute on a CPU."""
        return replace(
            self, sizes=LatentDemoConfig.tiny(), limit_images=SMOKE_IMAGES,
            vae=replace(self.vae, steps=6, max_seconds=None, batch_size=32, log_every=3),
            denoiser=replace(self.denoiser, steps=6, max_seconds=None, batch_size=32, log_every=3,
                             lr_warmup_images=64),
            settings=tuple(replace(s, steps=min(s.steps, 3)) for s in self.settings),
            eval_samples=min(self.eval_samples, 20), eval_batch_size=min(self.eval_batch_size, 10),
        )  # fmt: skip


def _sha256_tree(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _train(recipe: LatentRecipe, device: torch.device, emit: EmitFactory) -> dict[str, Any]:
    """Train all three networks and write the folder; the training part of the log."""
    from skiptune.demo.training.data import load_padded
    from skiptune.demo.training.latent import components as parts
    from skiptune.demo.training.latent.denoiser import train_denoiser
    from skiptune.demo.training.latent.prompts import build_tokenizer
    from skiptune.demo.training.latent.vae import (
        encode_dataset,
        reconstruction_mse,
        set_scaling_factor,
        train_vae,
    )
    from skiptune.demo.training.latent.vp_loss import alphas_cumprod

    images, labels = load_padded("train", root=recipe.data)
    test_images, _ = load_padded("test", root=recipe.data)
    if recipe.limit_images is not None:
        images, labels = images[: recipe.limit_images], labels[: recipe.limit_images]
        test_images = test_images[: recipe.limit_images]
    torch.manual_seed(recipe.vae.seed)
    vae_run = train_vae(
        parts.build_vae(recipe.sizes), images, config=recipe.vae, device=device, log=emit("vae")
    )
    vae = vae_run.vae
    both = torch.cat([images, images.flip(-1)])  # x-flips as data: the denoiser sees latents of both
    mean, std = encode_dataset(vae, both, device=device)
    factor = set_scaling_factor(vae, mean, std, seed=recipe.vae.seed)
    vae_log = {"steps": vae_run.steps, "seconds": round(vae_run.seconds, 1), "scaling_factor": factor,
               "test_reconstruction_mse": reconstruction_mse(vae, test_images, device=device),
               "config": vae_run.config, "losses": vae_run.losses}  # fmt: skip
    emit("vae")({k: v for k, v in vae_log.items() if k not in ("config", "losses")})
    tokenizer = build_tokenizer()
    torch.manual_seed(recipe.denoiser.seed)
    unet, text_encoder = parts.build_unet(recipe.sizes), parts.build_text_encoder(recipe.sizes, tokenizer)
    run = train_denoiser(
        unet, text_encoder, tokenizer, latents=(mean, std), labels=torch.cat([labels, labels]).to(device),
        scaling_factor=factor, abar=alphas_cumprod(parts.SCHEDULER_CONFIG), config=recipe.denoiser,
        device=device, log=emit("denoiser"),
    )  # fmt: skip
    pipeline = parts.assemble_pipeline(
        vae=vae.cpu(), text_encoder=run.text_encoder.cpu(), tokenizer=tokenizer, unet=run.unet.cpu()
    )
    folder = parts.save_pipeline(pipeline, recipe.out)
    counts = {n: sum(p.numel() for p in m.parameters()) for n, m in
              (("vae", vae), ("text_encoder", run.text_encoder), ("unet", run.unet))}  # fmt: skip
    return {
        "out": str(folder), "bytes": parts.folder_bytes(folder), "sha256_tree": _sha256_tree(folder),
        "parameters": counts, "sizes": recipe.sizes.as_dict(), "prediction_type": parts.PREDICTION_TYPE,
        "scheduler": parts.SCHEDULER_CONFIG, "vae": vae_log,
        "denoiser": {"steps": run.steps, "images_seen": run.images_seen, "seconds": round(run.seconds, 1),
                     "steps_per_second": round(run.steps / max(run.seconds, 1e-9), 2),
                     "final_loss": run.losses[-1]["loss"], "config": run.config, "losses": run.losses},
    }  # fmt: skip


def _evaluate(recipe: LatentRecipe, device: torch.device, emit: EmitFactory) -> dict[str, Any]:
    """Reload the folder with diffusers and measure every setting, plus the VAE's own floor."""
    from diffusers import StableDiffusionPipeline

    from skiptune.demo.bundled import DEMO_REFERENCE_PATH
    from skiptune.demo.classifier import load_demo_extractor
    from skiptune.demo.training.data import load_padded
    from skiptune.demo.training.latent.evaluate import evaluate_pipeline, score_samples
    from skiptune.demo.training.latent.vae import decode_roundtrip

    reference = recipe.reference or DEMO_REFERENCE_PATH
    extractor = load_demo_extractor(device, path=recipe.classifier)
    pipeline = StableDiffusionPipeline.from_pretrained(recipe.out).to(device)  # fp32: diffusers upcasts
    pipeline.set_progress_bar_config(disable=True)
    test_images, test_labels = load_padded("test", root=recipe.data)
    n = min(recipe.eval_samples, test_images.shape[0])
    recon = decode_roundtrip(pipeline.vae, test_images[:n], device=device)
    floor, floor_stats = score_samples(extractor, recon, test_labels[:n], reference=reference)
    out: dict[str, Any] = {"vae_roundtrip_test": floor, "settings": []}
    stats = {"vae_roundtrip_test": floor_stats}
    emit("eval")({"vae_roundtrip_fd": floor.get("frechet_distance"), "accuracy": floor["prompt_accuracy"]})
    for setting in recipe.settings:
        result, stats[setting.key] = evaluate_pipeline(
            pipeline, extractor, setting, reference=reference, samples=recipe.eval_samples,
            batch_size=recipe.eval_batch_size,
        )  # fmt: skip
        out["settings"].append(result)
        emit("eval")({k: v for k, v in result.items() if k != "prompt_accuracy_by_class"})
    if recipe.stats_out is not None:
        _save_stats(stats, recipe.stats_out)
        out["stats_file"] = str(recipe.stats_out)
    return out


def _save_stats(stats: dict[str, FeatureStats], path: Path) -> None:
    """Each evaluation's feature mean and covariance (``KEY_mu``, ``KEY_sigma``, ``KEY_count``) as .npz."""
    arrays: dict[str, Any] = {}
    for key, s in stats.items():
        arrays.update({f"{key}_mu": s.mean(), f"{key}_sigma": s.cov(), f"{key}_count": np.int64(s.count)})
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def run_recipe(recipe: LatentRecipe, *, emit: EmitFactory) -> dict[str, Any]:
    from skiptune.devices import resolve_device

    device = resolve_device(recipe.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    log: dict[str, Any] = {
        "device": str(device),
        "card": card,
        "torch": torch.__version__,
        "recipe": {k: v for k, v in asdict(recipe).items() if k not in ("vae", "denoiser")},
    }
    log.update(_train(recipe, device, emit))
    log["evaluation"] = _evaluate(recipe, device, emit)
    return log
