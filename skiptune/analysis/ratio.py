"""The paired ratio estimator: tuned / baseline loss on the same images and noise, with its standard error.

For per-image losses ``a_i`` (tuned) and ``b_i`` (baseline) of the same image and noise, the ratio is
the ratio of means ``R = mean(a) / mean(b)`` (the ratio of the two expected losses the paper compares),
and its standard error is the delta-method (linearisation) one of a ratio estimator::

    se(R) = sqrt( sum_i (a_i - R b_i)^2 / (n (n - 1)) ) / mean(b)

Why this one and not the mean of per-image ratios: per-image losses at small sigma can be tiny, so
per-image ratios are heavy-tailed, while the ratio of means is what "the loss went up by x%" means.
Pairing makes the error small: ``a_i - R b_i`` cancels what the image and the noise contribute to
both. It is exactly 1 with standard error 0 when the tuned losses equal the baseline's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from skiptune.errors import SkiptuneError


@dataclass(frozen=True)
class Ratio:
    """``value`` = mean(tuned) / mean(baseline) over ``n`` paired images; ``se`` its standard error."""

    value: float
    se: float
    n: int

    def below_one(self, z: float) -> bool:
        """Significantly below 1: ``value + z * se < 1``."""
        return self.value + z * self.se < 1.0

    def above_one(self, z: float) -> bool:
        """Significantly above 1: ``value - z * se > 1``."""
        return self.value - z * self.se > 1.0


def paired_ratio(tuned: np.ndarray, baseline: np.ndarray) -> Ratio:
    """The ratio of means of paired per-image losses and its delta-method standard error."""
    a = np.asarray(tuned, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise SkiptuneError(
            f"paired losses must be two 1-D arrays of the same length >= 2, got {a.shape} and {b.shape}"
        )
    mean_b = float(b.mean())
    if not mean_b > 0:
        return Ratio(value=math.nan, se=math.nan, n=int(a.size))
    value = float(a.mean()) / mean_b
    residual = a - value * b
    se = math.sqrt(float((residual**2).sum()) / (a.size * (a.size - 1))) / mean_b
    return Ratio(value=value, se=se, n=int(a.size))
