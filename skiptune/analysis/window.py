"""The suggested sigma window: the noise levels where the tuned pair lowers the feature loss significantly."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_Z = 2.0  # standard errors, as the validation stage's default gain threshold


@dataclass(frozen=True)
class SigmaWindow:
    """``[lo, hi]`` around one run of consecutive grid points with feature ratio + z se < 1."""

    lo: float
    hi: float
    points: int  # grid points inside
    mean_ratio: float  # mean feature ratio over them
    reduction: float  # sum over them of (1 - ratio): what ranks runs
    z: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def significant_runs(
    sigmas: Sequence[float], ratios: Sequence[float], ses: Sequence[float], *, z: float = DEFAULT_Z
) -> list[SigmaWindow]:
    """Every run of consecutive grid points where the feature ratio is significantly below 1, in sigma order.

    Significant: ``ratio + z * se < 1``. A run's bounds lie halfway (in log sigma) between its end points
    and their outer neighbours (or at the grid's ends): every sigma inside is nearer to a significant
    grid point than to any other, so a sampler's noise levels between grid points are assigned by their
    nearest measurement.
    """
    if not len(sigmas) == len(ratios) == len(ses):
        raise ValueError(f"{len(sigmas)} sigmas, {len(ratios)} ratios and {len(ses)} standard errors")
    runs: list[list[int]] = []
    for k, (ratio, se) in enumerate(zip(ratios, ses)):
        if ratio + z * se < 1.0:  # False for NaN
            if runs and runs[-1][-1] == k - 1:
                runs[-1].append(k)
            else:
                runs.append([k])
    return [_window(sigmas, ratios, run, z) for run in runs]


def suggest_window(
    sigmas: Sequence[float], ratios: Sequence[float], ses: Sequence[float], *, z: float = DEFAULT_Z
) -> SigmaWindow | None:
    """The suggested window: of :func:`significant_runs`, the one with the largest summed reduction
    ``sum(1 - ratio)`` (where the pair does the most good), ties to the lower sigmas; None without any."""
    runs = significant_runs(sigmas, ratios, ses, z=z)
    return max(runs, key=lambda w: w.reduction, default=None)


def _window(sigmas: Sequence[float], ratios: Sequence[float], run: list[int], z: float) -> SigmaWindow:
    first, last = run[0], run[-1]
    lo = math.sqrt(sigmas[first - 1] * sigmas[first]) if first > 0 else sigmas[first]
    hi = math.sqrt(sigmas[last] * sigmas[last + 1]) if last + 1 < len(sigmas) else sigmas[last]
    return SigmaWindow(
        lo=float(lo), hi=float(hi), points=len(run), mean_ratio=sum(ratios[k] for k in run) / len(run),
        reduction=sum(1.0 - ratios[k] for k in run), z=z,
    )  # fmt: skip
