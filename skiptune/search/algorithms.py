"""Search algorithms by name: each builds an Optuna sampler for a search space, budget and worker seed.

Each worker process builds its own sampler with its own seed, so parallel proposals differ; TPE's
``constant_liar`` makes a worker treat the other workers' RUNNING trials as bad results, so they do
not all propose the same point.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import optuna

from skiptune.registry import Registry
from skiptune.search.space import SearchSpace

SamplerFactory = Callable[[SearchSpace, int, int], optuna.samplers.BaseSampler]
"""(space, n_trials, seed) -> sampler."""

SEARCH_ALGORITHMS: Registry[SamplerFactory] = Registry("search algorithm")


def _startup_trials(n_trials: int) -> int:
    # A third of the budget explores at random (at most Optuna's default 10, at least 2).
    return max(2, min(10, n_trials // 3))


@SEARCH_ALGORITHMS.decorator("tpe")
def _tpe(space: SearchSpace, n_trials: int, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(
        multivariate=True, constant_liar=True, seed=seed, n_startup_trials=_startup_trials(n_trials)
    )


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
