"""Numbers for the model card: classifier accuracy, the FD floor, and a model's FD at one NFE.

The floor is the Fréchet distance (in the fmnist-classifier feature space) between the 10k test
images and the training-set reference: no generator can be expected to beat real held-out data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from skiptune.bundled import DEMO_REFERENCE_PATH
from skiptune.training.reference_stats import split_stats, stats_of_batches

LogFn = Callable[[dict[str, Any]], None]


def evaluate_demo(
    *,
    model: str | Path | None,
    reference: str | Path | None,
    classifier: str | Path | None,
    data: str | None,
    sampler: str,
    nfe: int,
    samples: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    log: LogFn,
) -> dict[str, Any]:
    from skiptune.objectives.classifier import load_demo_extractor
    from skiptune.objectives.frechet import frechet_distance
    from skiptune.objectives.reference import load_reference
    from skiptune.training.classifier import accuracy
    from skiptune.training.data import load_padded

    extractor = load_demo_extractor(device, path=classifier)
    ref = load_reference(reference or DEMO_REFERENCE_PATH)
    test_images, test_labels = load_padded("test", root=data)
    out: dict[str, Any] = {"test_accuracy": accuracy(extractor.model, test_images, test_labels)}
    test = split_stats(extractor, test_images, batch_size=batch_size)
    out["fd_floor_test_vs_train"] = frechet_distance(test.mean(), test.cov(), ref.mu, ref.sigma)
    log({"test_accuracy": out["test_accuracy"], "fd_floor": out["fd_floor_test_vs_train"]})
    if model is not None:
        from skiptune.nets.checkpoints import load_checkpoint
        from skiptune.sampling import generate_images

        net = load_checkpoint(model, device=device)
        start = time.perf_counter()
        batches = generate_images(
            net,
            sampler=sampler,
            nfe=nfe,
            seeds=range(seed, seed + samples),
            batch_size=batch_size,
            device=device,
        )
        gen = stats_of_batches(extractor, batches)
        key = f"fd_{sampler}_nfe{nfe}_{samples}_samples"
        out[key] = frechet_distance(gen.mean(), gen.cov(), ref.mu, ref.sigma)
        out["sampling_seconds"] = round(time.perf_counter() - start, 1)
        log({key: out[key], "seconds": out["sampling_seconds"]})
    return out
