"""``analyze``: per-sigma pixel and feature losses of skip schedules against the baseline (1, 1).

The paper's explanation of Skip-Tuning (Ma et al., ICML 2024): a tuned pair raises the denoising loss
in pixel space but lowers it in a feature space, most at intermediate noise levels. This composes the
stages: real images -> per-image losses (:mod:`.losses`) -> paired ratios per sigma (:mod:`.table`)
-> the suggested sigma window (:mod:`.window`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from skiptune.analysis.grid import DEFAULT_POINTS, sigma_grid, sigma_range
from skiptune.analysis.losses import PerImageLosses, per_image_losses
from skiptune.analysis.table import comparison_rows
from skiptune.analysis.window import DEFAULT_Z, SigmaWindow, significant_runs, suggest_window
from skiptune.errors import SkiptuneError
from skiptune.objectives.data import ImageSource
from skiptune.objectives.features import FeatureExtractor
from skiptune.skips import SkipSchedule

BASELINE = SkipSchedule()


@dataclass(frozen=True)
class Comparison:
    """One tuned schedule against the baseline: rows per sigma and the suggested window (or None)."""

    schedule: SkipSchedule
    rows: list[dict[str, Any]]
    window: SigmaWindow | None
    runs: list[SigmaWindow] = field(default_factory=list)  # every significant run; window is one of them

    def to_dict(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule.to_dict(),
            "rows": self.rows,
            "window": self.window.to_dict() if self.window else None,
            "significant_runs": [run.to_dict() for run in self.runs],
        }


@dataclass(frozen=True)
class Analysis:
    """The result of :func:`analyze`: the comparisons and everything that changes the numbers."""

    comparisons: list[Comparison]
    losses: PerImageLosses = field(repr=False)
    extractor: str
    seed: int
    z: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "sigmas": list(self.losses.sigmas),
            "sigma_data": self.losses.sigma_data,
            "n_images": int(self.losses.pixel.shape[2]),
            "extractor": self.extractor,
            "seed": self.seed,
            "z": self.z,
            "comparisons": [c.to_dict() for c in self.comparisons],
        }


def analyze(
    net: torch.nn.Module,
    images: torch.Tensor,
    *,
    schedules: Sequence[SkipSchedule],
    extractor: FeatureExtractor,
    sigmas: Sequence[float] | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    z: float = DEFAULT_Z,
) -> Analysis:
    """Compare each of ``schedules`` with the baseline (1, 1) on uint8 ``images`` ``[N,C,H,W]``.

    ``sigmas`` default to :data:`~skiptune.analysis.grid.DEFAULT_POINTS` log-spaced levels over the
    sampler's range for ``net``. The baseline is always computed first, on the same images and noise.
    """
    if not schedules:
        raise SkiptuneError("nothing to compare: give at least one schedule besides the baseline (1, 1)")
    grid = list(sigmas) if sigmas is not None else sigma_grid(*sigma_range(net), DEFAULT_POINTS)
    losses = per_image_losses(
        net, images, schedules=[BASELINE, *schedules], sigmas=grid, extractor=extractor, seed=seed,
        batch_size=batch_size, device=device,
    )  # fmt: skip
    comparisons = []
    for index, schedule in enumerate(schedules, start=1):
        rows = comparison_rows(losses, index)
        ratios, ses = [r["feature_ratio"] for r in rows], [r["feature_ratio_se"] for r in rows]
        window = suggest_window(grid, ratios, ses, z=z)
        runs = significant_runs(grid, ratios, ses, z=z)
        comparisons.append(Comparison(schedule=schedule, rows=rows, window=window, runs=runs))
    return Analysis(comparisons=comparisons, losses=losses, extractor=extractor.name, seed=seed, z=z)


def first_images(source: ImageSource, n: int) -> torch.Tensor:
    """The first ``n`` images of ``source`` (its own order), uint8 ``[n,C,H,W]``."""
    if n < 2:
        raise SkiptuneError(f"bad --n-images {n}: expected at least 2 (a standard error needs two)")
    if len(source) < n:
        raise SkiptuneError(
            f"{source.description} has {len(source)} images, fewer than the {n} asked for; "
            f"lower --n-images to at most {len(source)}"
        )
    taken: list[torch.Tensor] = []
    count = 0
    for batch in source.batches(min(n, 1024)):
        taken.append(batch[: n - count])
        count += len(taken[-1])
        if count >= n:
            break
    return torch.cat(taken)
