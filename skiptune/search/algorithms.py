"""Search algorithms by name: each builds an Optuna sampler for a search space, budget and seed.

Each worker process builds its own sampler per study, seeded from the study's recorded seed, the
worker's seed and the phase's name (``sampler_seed``), so parallel proposals differ and one worker with a
given seed repeats its proposals exactly; TPE's ``constant_liar`` makes a worker treat the other workers'
RUNNING trials as bad results, so they do not all propose the same point.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution

from skiptune.registry import Registry
from skiptune.search.space import SearchSpace

SamplerFactory = Callable[[SearchSpace, int, int], optuna.samplers.BaseSampler]
"""(space, n_trials, seed) -> sampler."""

SEARCH_ALGORITHMS: Registry[SamplerFactory] = Registry("search algorithm")


def _startup_trials(n_trials: int) -> int:
    # A third of the budget explores at random (at most Optuna's default 10, at least 2).
    return max(2, min(10, n_trials // 3))


class _KnownSpaceTPE(optuna.samplers.TPESampler):
    """Multivariate TPE over a space known in advance.

    Every trial of a skiptune study (or grow phase) suggests the same distributions, its priors
    included, so the space Optuna would infer (the intersection over all completed trials: a read of
    the whole study at every ask) is this one; before the first completed trial TPE samples at random
    either way (startup trials).
    """

    def __init__(self, space: SearchSpace, **kwargs: Any) -> None:
        super().__init__(multivariate=True, **kwargs)
        self._known = {n: d for n, d in space.distributions().items() if not d.single()}

    def infer_relative_search_space(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return dict(self._known)


@SEARCH_ALGORITHMS.decorator("tpe")
def _tpe(space: SearchSpace, n_trials: int, seed: int) -> optuna.samplers.BaseSampler:
    return _KnownSpaceTPE(space, constant_liar=True, seed=seed, n_startup_trials=_startup_trials(n_trials))


@SEARCH_ALGORITHMS.decorator("gp")
def _gp(space: SearchSpace, n_trials: int, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=_startup_trials(n_trials))


@SEARCH_ALGORITHMS.decorator("grid")
def _grid(space: SearchSpace, n_trials: int, seed: int) -> optuna.samplers.BaseSampler:
    # An even grid with about n_trials points in all (enqueued baseline/warm starts come on top of
    # the grid's own points inside the same budget).
    dists = space.distributions()
    per_axis = max(2, math.floor(n_trials ** (1 / len(dists))))
    grid: dict[str, list[float]] = {}
    for name, dist in dists.items():
        points = (
            np.geomspace(dist.low, dist.high, per_axis)
            if dist.log
            else np.linspace(dist.low, dist.high, per_axis)
        )
        grid[name] = [round(float(p), 6) for p in points]
    return optuna.samplers.GridSampler(grid, seed=seed)


def build_sampler(name: str, *, space: SearchSpace, n_trials: int, seed: int) -> optuna.samplers.BaseSampler:
    return SEARCH_ALGORITHMS.get(name)(space, n_trials, seed)


def sampler_seed(*, study_seed: int | None, worker_seed: int, study_name: str) -> int:
    """The seed of one worker's sampler for one study or grow phase (``study_name``)."""
    return zlib.crc32(f"{study_seed}:{worker_seed}:{study_name}".encode()) & 0x7FFFFFFF
