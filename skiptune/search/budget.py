"""The trial budget of a study, met exactly however many workers race for it.

A trial *counts* against the budget while it is WAITING (enqueued), RUNNING, COMPLETE, PRUNED, or
FAILed by its own evaluation (NaN samples, out of memory: rerunning it would fail again). A trial
does not count when it was failed by the heartbeat (its worker died), released by a stopping worker
(both are re-enqueued as a new WAITING trial), or refused for being over budget.

Claiming a slot: a worker first creates its trial (``study.ask``; Optuna numbers trials under a
lock on the study row, so numbers follow creation order), then counts the counting trials with a
*smaller* number. If there are already ``budget`` of them the trial is over budget and is failed
at once, before any evaluation. Every trial that ever counts does so from its creation until it
finishes, so of any ``budget + 1`` trials counting at the same time the youngest saw all others at
its check and refused itself: never more than ``budget`` evaluations count, and workers keep
claiming while fewer count, so the budget is met exactly.

A re-run (``lineage.py``) is enqueued before its original is failed and keeps the original's
*place*: the rule above reads "places" for "numbers", a lineage counts once however many of its
trials count at the moment, and it counts without a gap from its first trial's creation on.
"""

from __future__ import annotations

from typing import Any

from optuna.trial import FrozenTrial, TrialState

from skiptune.search.lineage import place
from skiptune.search.records import (  # re-exported: the fail kinds are part of the budget's rule
    EVALUATION_FAILED,
    FAIL_ATTR,
    OVER_BUDGET,
    PRIOR,
    RELEASED,
    ROLE_ATTR,
    fresh_trials,
)

__all__ = [
    "EVALUATION_FAILED",
    "FAIL_ATTR",
    "OVER_BUDGET",
    "RELEASED",
    "counts_against_budget",
    "fresh_trials",
    "used_budget",
    "within_budget",
]

_COUNTING_STATES = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)


def counts_against_budget(trial: FrozenTrial) -> bool:
    if trial.user_attrs.get(ROLE_ATTR) == PRIOR:
        return False  # an earlier phase's trial copied into a grow phase: evaluated and counted there
    if trial.state in _COUNTING_STATES:
        return True
    fail: Any = trial.user_attrs.get(FAIL_ATTR)
    return trial.state == TrialState.FAIL and isinstance(fail, dict) and fail.get("kind") == EVALUATION_FAILED


def used_budget(trials: list[FrozenTrial]) -> int:
    return len({place(t) for t in trials if counts_against_budget(t)})


def within_budget(trials: list[FrozenTrial], trial_number: int, budget: int) -> bool:
    """Whether the trial numbered ``trial_number`` holds one of the budget's slots; ``trials``: the
    study's trials read after that trial was created (``records.ask_time_trials``)."""
    mine = place(next(t for t in trials if t.number == trial_number))
    ahead = {place(t) for t in trials if counts_against_budget(t) and place(t) < mine}
    return len(ahead) < budget
