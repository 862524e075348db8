"""The refinement box's shape: wide along the coefficient the distance hardly changes with, narrow along
the one it is sensitive to.

On the demo model the gain at Heun NFE 13-35 lies on a band about 0.06 wide in rho_top and 0.4 long in
rho_bottom (a Gaussian process fitted to the GPU runs' trials, docs/results.md: length scales 0.05 and
0.4). A square refinement box of half-width 0.1 puts most of its trials off that band, and the search
runs of docs/results.md answered `no-gain` there one time in three. The box keeps the square's area and
takes its aspect from length scales fitted to the study's own completed trials: log distances at the last
rung (the same seeds for every trial), clipped to 1 above the best (e: 2.7 times the best distance; far
worse trials only say "far") less their median, a Gaussian process with an anisotropic
squared-exponential kernel, length scales and noise chosen by marginal likelihood over a fixed grid.
Deterministic: any worker that plans the refinement computes the same box.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Length scales tried, as fractions of the box's width on each axis.
_SCALES = (0.025, 0.05, 0.1, 0.2, 0.4, 0.8)
_NOISES = (0.02, 0.05, 0.1, 0.2)
#: At least this many completed trials to fit a shape (else the square box).
MIN_POINTS = 6
#: The longest side is at most this many times the shortest.
MAX_ASPECT = 8.0


@dataclass(frozen=True)
class GPFit:
    """A Gaussian process's posterior mean over 2-D points (anisotropic squared-exponential kernel)."""

    x: np.ndarray
    alpha: np.ndarray
    mean: float
    signal: float
    scales: tuple[float, float]

    def predict(self, points: np.ndarray) -> np.ndarray:
        d = (points[:, None, :] - self.x[None, :, :]) / np.array(self.scales)
        return self.mean + self.signal * np.exp(-0.5 * (d**2).sum(-1)) @ self.alpha


def fit_gp(
    x: np.ndarray,
    y: np.ndarray,
    scales: tuple[Sequence[float], Sequence[float]],
    noises: Sequence[float],
    *,
    min_signal: float = 1e-6,
) -> GPFit:
    """The GP of the grid's (scale, scale, noise) with the least negative log marginal likelihood; mean
    the median of ``y``, signal variance the variance of ``y`` (at least ``min_signal``)."""
    mean = float(np.median(y))
    yc = y - mean
    signal = max(float(np.var(yc)), min_signal)
    sq = (x[:, None, :] - x[None, :, :]) ** 2
    best: tuple[float, GPFit] | None = None
    for a, b, noise in itertools.product(scales[0], scales[1], noises):
        k = signal * np.exp(-0.5 * (sq[..., 0] / a**2 + sq[..., 1] / b**2)) + noise**2 * np.eye(len(y))
        chol = np.linalg.cholesky(k)
        alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, yc))
        nll = 0.5 * float(yc @ alpha) + float(np.log(np.diag(chol)).sum())
        if best is None or nll < best[0] - 1e-9:
            best = (nll, GPFit(x, alpha, mean, signal, (a, b)))
    assert best is not None
    return best[1]


def length_scales(
    points: Sequence[tuple[float, float]], distances: Sequence[float], widths: tuple[float, float]
) -> tuple[float, float] | None:
    """Length scales (in units of ``widths``) of a GP fitted to log ``distances`` at ``points``;
    None with fewer than ``MIN_POINTS`` usable trials."""
    rows = [(p, d) for p, d in zip(points, distances, strict=True) if math.isfinite(d) and d > 0]
    if len(rows) < MIN_POINTS:
        return None
    x = np.array([p for p, _ in rows], dtype=float) / np.array(widths, dtype=float)
    y = np.log([d for _, d in rows])
    return fit_gp(x, np.minimum(y, y.min() + 1.0), (_SCALES, _SCALES), _NOISES).scales


def aspect(scales: tuple[float, float] | None) -> float:
    """Half-width factors are (aspect, 1 / aspect): the same area as the square, sides as sqrt of the
    length scales' ratio (capped at ``MAX_ASPECT`` between the sides); 1 without a fit."""
    if scales is None:
        return 1.0
    ratio = min(MAX_ASPECT, max(1 / MAX_ASPECT, scales[0] / scales[1]))
    return math.sqrt(ratio)
