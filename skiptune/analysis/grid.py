"""The noise levels the analysis visits: a log-spaced grid over the range the samplers use."""

from __future__ import annotations

import math
import re

import torch

from skiptune.errors import SkiptuneError
from skiptune.sampling.schedule import EDMSchedule

DEFAULT_POINTS = 24


def sigma_range(net: torch.nn.Module) -> tuple[float, float]:
    """The sampler's noise range for ``net``: EDM's [0.002, 80] clamped to the network's own range.

    Why this range: it is where the samplers evaluate the network, so it is where a tuned pair can
    change an image (the same clamp as :class:`~skiptune.sampling.schedule.EDMSchedule`).
    """
    schedule = EDMSchedule()
    lo = max(schedule.sigma_min, float(getattr(net, "sigma_min", 0.0)))
    hi = min(schedule.sigma_max, float(getattr(net, "sigma_max", math.inf)))
    if not 0 < lo < hi:
        raise SkiptuneError(
            f"the network's noise range [{lo}, {hi}] is empty; give the noise levels with --sigmas"
        )
    return lo, hi


def sigma_grid(lo: float, hi: float, points: int = DEFAULT_POINTS) -> list[float]:
    """``points`` noise levels from ``lo`` to ``hi`` (both included), equally spaced in log sigma."""
    if points < 1 or not 0 < lo <= hi or not math.isfinite(hi):
        raise SkiptuneError(
            f"bad sigma grid {lo}:{hi}:{points}: expected 0 < LO <= HI < inf and at least one point"
        )
    if points == 1:
        return [float(lo)]
    step = (math.log(hi) - math.log(lo)) / (points - 1)
    inner = [float(math.exp(math.log(lo) + i * step)) for i in range(1, points - 1)]
    return [float(lo), *inner, float(hi)]  # exact ends: a window reaching hi must contain the sampler's hi


def parse_sigmas(text: str) -> list[float]:
    """``--sigmas``: a comma list (``0.05,0.5,5``) or a log-spaced grid ``LO:HI:N`` (``0.002:80:24``)."""
    grid = re.fullmatch(r"\s*([^:,]+):([^:,]+):(\d+)\s*", text)
    try:
        if grid:
            return sigma_grid(float(grid.group(1)), float(grid.group(2)), int(grid.group(3)))
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or any(not (0 < v < math.inf) for v in values) or values != sorted(set(values)):
        raise SkiptuneError(
            f"bad --sigmas {text!r}: expected increasing positive numbers like '0.05,0.5,5' or a "
            "log-spaced grid LO:HI:N like '0.002:80:24'"
        )
    return values
