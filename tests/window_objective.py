"""A known landscape over (rho_bottom, rho_top) x sigma window, for the window stage's service tests.

The pair's effect g(rho) is 1 at (0.6, 0.6) and 0 at (1, 1) (the untuned network: the baseline's
value is exactly 1); each sampler level adds ``EFFECTS[i] * g`` to the gain when the window contains
it, so the best window holds levels 0-2 (0.13 g) and beats the full range (0.10 g); level 3 hurts.
Held-out blocks spread by 0.001 alike for every schedule (finite, paired standard errors).
Also a worker entry point for subprocess tests: ``python tests/window_objective.py URL MODEL DELAY``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

from skiptune.objectives.holdout import BlockDistances
from skiptune.sampling.levels import levels_in_window

EFFECTS = (0.05, -0.02, 0.10, -0.03)


def pair_effect(rho_bottom: float, rho_top: float) -> float:
    return 1.0 - ((rho_bottom - 0.6) ** 2 + (rho_top - 0.6) ** 2) / 0.32


class LevelObjective:
    """An objective whose value depends on which sampler levels the schedule's window contains."""

    def __init__(self, spec: Any, *, delay: float = 0.0) -> None:
        self.spec = spec
        self.levels = spec.sampler_sigmas
        self.delay = delay
        assert self.levels is not None and len(self.levels) == len(EFFECTS), self.levels

    def value(self, schedule: Any) -> float:
        inside = levels_in_window(schedule.sigma_window, self.levels)
        return 1.0 - pair_effect(schedule.rho_bottom, schedule.rho_top) * sum(EFFECTS[i] for i in inside)

    def identity(self) -> dict[str, Any]:
        return dict(self.spec.objective_identity())

    def evaluate(self, schedule: Any) -> Iterator[tuple[int, float]]:
        time.sleep(self.delay)
        yield 8, self.value(schedule) + 0.01
        time.sleep(self.delay)
        yield 16, self.value(schedule)

    def block_distances(
        self, schedule: Any, *, seed_base: int, n_samples: int, blocks: int
    ) -> BlockDistances:
        time.sleep(self.delay)
        v = self.value(schedule)
        return BlockDistances(v, tuple(v + 0.001 * (b % 2) for b in range(blocks)), n_samples, seed_base)


def main(url: str, model: str, delay: float) -> int:
    """A CPU worker on ``url`` that evaluates with :class:`LevelObjective` (1 s heartbeat, grace 10 s)."""
    import logging

    from skiptune.search.worker.loop import run_worker

    logging.basicConfig(level=logging.INFO)
    summary = run_worker(
        url, model=model, device="cpu", heartbeat=1, grace=10,
        objective_factory=lambda net, spec, **_: LevelObjective(spec, delay=delay),
    )  # fmt: skip
    return summary.exit_code()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
