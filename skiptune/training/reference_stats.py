"""Reference statistics of Fashion-MNIST in the fmnist-classifier feature space (float64 sums)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from skiptune.objectives.classifier import ClassifierExtractor

if TYPE_CHECKING:  # frechet imports torch-fidelity: keep it out of module import
    from skiptune.objectives.frechet import FeatureStats


def stats_of_batches(extractor: ClassifierExtractor, batches: Iterable[torch.Tensor]) -> FeatureStats:
    """Accumulate the extractor's features of uint8 image batches (on its device, in float64)."""
    from skiptune.objectives.frechet import FeatureStats

    stats = FeatureStats(extractor.feature_dim, device=extractor.device)
    for batch in batches:
        stats.update(extractor(batch))
    return stats


def split_stats(
    extractor: ClassifierExtractor, images: torch.Tensor, *, batch_size: int = 1000
) -> FeatureStats:
    return stats_of_batches(
        extractor, (images[i : i + batch_size] for i in range(0, images.shape[0], batch_size))
    )


def save_reference_stats(
    stats: FeatureStats,
    path: str | Path,
    *,
    extractor: ClassifierExtractor,
    source: str = "Fashion-MNIST train",
) -> dict[str, Any]:
    """Write D's reference ``.npz`` (mu, sigma + metadata); returns the metadata, sha256 included."""
    from skiptune.objectives.reference import ReferenceStats, save_reference

    reference = ReferenceStats(
        mu=stats.mean(),
        sigma=stats.cov(),
        count=stats.count,
        resolution=extractor.input_resolution,
        extractor=extractor.name,
        source=f"{source} ({stats.count} images, padded to 32x32)",
    )
    save_reference(reference, path)
    return reference.metadata()
