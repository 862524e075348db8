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
    z: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def suggest_window(
    sigmas: Sequence[float], ratios: Sequence[float], ses: Sequence[float], *, z: float = DEFAULT_Z
) -> SigmaWindow | None:
    """The run of consecutive grid points where the feature ratio is significantly below 1, or None.

    Significant: ``ratio + z * se < 1``. Among several runs the one with the largest summed reduction
    ``sum(1 - ratio)`` wins (the range where the pair does the most good), ties to the lower sigmas.
    Its bounds lie halfway (in log sigma) between the run's end points and their outer neighbours (or
    at the grid's ends): every sigma inside is nearer to a significant grid point than to any other, so
    a sampler's noise levels between grid points are assigned by their nearest measurement.
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
    if not runs:
        return None
    best = max(runs, key=lambda run: sum(1.0 - ratios[k] for k in run))
    first, last = best[0], best[-1]
    lo = math.sqrt(sigmas[first - 1] * sigmas[first]) if first > 0 else sigmas[first]
    hi = math.sqrt(sigmas[last] * sigmas[last + 1]) if last + 1 < len(sigmas) else sigmas[last]
    return SigmaWindow(
        lo=float(lo), hi=float(hi), points=len(best),
        mean_ratio=sum(ratios[k] for k in best) / len(best), z=z,
    )  # fmt: skip
