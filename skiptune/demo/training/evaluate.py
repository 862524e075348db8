"""Numbers for the model card: classifier accuracy, the FD floor, and a model's FD at one NFE.

The floor is the Fréchet distance (in the fmnist-classifier feature space) between the 10k test
images and the training-set reference: no generator can be expected to beat real held-out data.
The model's distance is the objective every study measures (``FDObjective`` with the untuned
schedule), so the card and the studies cannot disagree on what a number means.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from skiptune.demo.bundled import DEMO_REFERENCE, DEMO_REFERENCE_PATH

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
    from skiptune.demo.classifier import load_demo_extractor
    from skiptune.demo.training.classifier import accuracy
    from skiptune.demo.training.data import load_padded
    from skiptune.demo.training.reference_stats import split_reference
    from skiptune.objectives.frechet import frechet_distance
    from skiptune.objectives.reference import load_reference

    extractor = load_demo_extractor(device, path=classifier)
    ref = load_reference(reference or DEMO_REFERENCE_PATH)
    test_images, test_labels = load_padded("test", root=data)
    out: dict[str, Any] = {"test_accuracy": accuracy(extractor.model, test_images, test_labels)}
    test = split_reference(extractor, "test", root=data, batch_size=batch_size)
    out["fd_floor_test_vs_train"] = frechet_distance(test.mu, test.sigma, ref.mu, ref.sigma)
    log({"test_accuracy": out["test_accuracy"], "fd_floor": out["fd_floor_test_vs_train"]})
    if model is not None:
        from skiptune.nets.checkpoints import load_checkpoint
        from skiptune.objectives.fid import FDObjective
        from skiptune.objectives.spec import ObjectiveSpec
        from skiptune.skips import SkipSchedule

        spec = ObjectiveSpec.describe(
            extractor, ref, reference_name=str(reference or DEMO_REFERENCE), n_samples=samples, seed_base=seed
        )
        objective = FDObjective(
            spec=spec, denoiser=load_checkpoint(model, device=device), sampler=sampler, nfe=nfe,
            extractor=extractor, reference=ref, batch_size=batch_size, device=device, progress=False,
        )  # fmt: skip
        start = time.perf_counter()
        *_, (_, distance) = objective.evaluate(SkipSchedule())
        key = f"fd_{sampler}_nfe{nfe}_{samples}_samples"
        out[key] = distance
        out["sampling_seconds"] = round(time.perf_counter() - start, 1)
        log({key: out[key], "seconds": out["sampling_seconds"]})
    return out
