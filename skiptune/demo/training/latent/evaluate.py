"""The latent demo's numbers, measured through diffusers' own ``StableDiffusionPipeline``.

Sample i gets class i mod 10 (prompt ``EVAL_TEMPLATE``) and its own generator seeded ``seed_base + i``
(one generator per sample: the same image whatever the batch size). The images ([0, 1] from the
pipeline, quantised to uint8 as a PNG would be) go to the fmnist-classifier: accuracy = how often its
argmax is the prompted class (does the model follow its prompts?), and the Fréchet distance of their
features to the ``demo`` reference (the 60k training images), the number every demo study measures.
Guided: one step = one guided UNet evaluation at twice the batch = one NFE.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from skiptune.demo.training.latent.components import Pipeline
from skiptune.demo.training.latent.prompts import CLASS_NAMES, class_prompt

if TYPE_CHECKING:
    from skiptune.demo.classifier import ClassifierExtractor
    from skiptune.objectives.frechet import FeatureStats

SCHEDULERS = ("ddim", "euler", "dpmpp_2m")


@dataclass(frozen=True)
class SampleSetting:
    """One evaluation: a diffusers scheduler, its number of steps, the guidance scale."""

    scheduler: str = "ddim"
    steps: int = 50
    guidance: float = 3.0

    @property
    def key(self) -> str:
        return f"{self.scheduler}_{self.steps}steps_cfg{self.guidance:g}"


def use_scheduler(pipeline: Pipeline, name: str) -> None:
    """Swap in diffusers' scheduler ``name`` built from the folder's own scheduler config."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    config = pipeline.scheduler.config
    if name == "ddim":
        pipeline.scheduler = DDIMScheduler.from_config(config)
    elif name == "euler":
        pipeline.scheduler = EulerDiscreteScheduler.from_config(config)
    elif name == "dpmpp_2m":
        pipeline.scheduler = DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
    else:
        raise ValueError(f"unknown scheduler {name!r}; expected one of {SCHEDULERS}")


@torch.no_grad()
def generate_by_prompt(
    pipeline: Pipeline, setting: SampleSetting, *, samples: int, batch_size: int,
    seed_base: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(uint8 images [N,1,32,32] on the CPU, prompted labels [N]) for samples 0..N-1."""
    use_scheduler(pipeline, setting.scheduler)
    device = pipeline.device
    labels = torch.arange(samples) % len(CLASS_NAMES)
    images = []
    for lo in range(0, samples, batch_size):
        idx = range(lo, min(lo + batch_size, samples))
        gens = [torch.Generator(device=device).manual_seed(seed_base + i) for i in idx]
        out = pipeline([class_prompt(int(labels[i])) for i in idx], num_inference_steps=setting.steps,
                       guidance_scale=setting.guidance, generator=gens, output_type="pt")  # fmt: skip
        images.append((out.images.float() * 255).round().clamp(0, 255).to(torch.uint8).cpu())
    return torch.cat(images), labels


@torch.no_grad()
def score_samples(
    extractor: ClassifierExtractor, images: torch.Tensor, labels: torch.Tensor, *, reference: str | Path
) -> tuple[dict[str, Any], FeatureStats]:
    """Prompt accuracy (overall and per class) and the Fréchet distance to ``reference``; the features'
    statistics too (to recompute the distance where torch-fidelity is missing)."""
    from skiptune.objectives.frechet import FeatureStats, frechet_distance
    from skiptune.objectives.reference import load_reference

    stats = FeatureStats(extractor.feature_dim, device=extractor.device)
    hits = torch.zeros(len(CLASS_NAMES))
    for chunk, chunk_labels in zip(images.split(1000), labels.split(1000), strict=True):
        features = extractor(chunk)
        stats.update(features)
        pred = extractor.model.head(features).argmax(1).cpu()
        hits += torch.bincount(chunk_labels[pred == chunk_labels], minlength=len(CLASS_NAMES)).float()
    counts = torch.bincount(labels, minlength=len(CLASS_NAMES)).clamp(min=1).float()
    out: dict[str, Any] = {
        "samples": int(labels.numel()),
        "prompt_accuracy": float(hits.sum() / labels.numel()),
        "prompt_accuracy_by_class": {
            n: round(float(a), 4) for n, a in zip(CLASS_NAMES, hits / counts, strict=True)
        },
    }
    ref = load_reference(reference)
    try:
        out["frechet_distance"] = frechet_distance(stats.mean(), stats.cov(), ref.mu, ref.sigma)
    except ImportError as exc:  # torch-fidelity missing: keep the accuracy, say why the distance is absent
        out["frechet_distance_error"] = f"{type(exc).__name__}: {exc}"
    return out, stats


def evaluate_pipeline(
    pipeline: Pipeline, extractor: ClassifierExtractor, setting: SampleSetting, *,
    reference: str | Path, samples: int, batch_size: int, seed_base: int = 0,
) -> tuple[dict[str, Any], FeatureStats]:  # fmt: skip
    """One setting's numbers (with its sampling time) as a JSON-able dict, and its feature statistics."""
    start = time.perf_counter()
    images, labels = generate_by_prompt(pipeline, setting, samples=samples, batch_size=batch_size,
                                        seed_base=seed_base)  # fmt: skip
    seconds = time.perf_counter() - start
    scores, stats = score_samples(extractor, images, labels, reference=reference)
    result = {"setting": setting.key, "scheduler": setting.scheduler, "steps": setting.steps,
              "nfe": setting.steps, "guidance": setting.guidance, "seed_base": seed_base,
              "sampling_seconds": round(seconds, 1), **scores}  # fmt: skip
    return result, stats
