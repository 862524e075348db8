"""One trial, start to end: claim a budget slot, evaluate rung by rung, tell or release."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from skiptune.errors import EvaluationError
from skiptune.objectives.holdout import BlockDistances
from skiptune.search import lineage
from skiptune.search.budget import within_budget
from skiptune.search.records import (
    EVALUATION_FAILED,
    FAIL_ATTR,
    OVER_BUDGET,
    PRECISION_ATTR,
    ROLE_ATTR,
    WORKER_ATTR,
    ask,
    ask_time_trials,
    study_storage,
    tell,
    trial_id,
)
from skiptune.search.study import StudySpec
from skiptune.search.worker.heartbeat import Heartbeat
from skiptune.search.worker.resilience import StorageGuard
from skiptune.search.worker.stopping import StopSignal, WorkerStopped
from skiptune.skips import SkipSchedule

_log = logging.getLogger(__name__)


class Objective(Protocol):
    """What a worker evaluates (``skiptune.objectives.fid.FDObjective``)."""

    def evaluate(self, schedule: SkipSchedule) -> Iterator[tuple[int, float]]: ...

    def block_distances(
        self, schedule: SkipSchedule, *, seed_base: int, n_samples: int, blocks: int, clip: Any = None
    ) -> BlockDistances: ...

    def identity(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class TrialOutcome:
    number: int
    state: str  # "complete", "pruned", "failed", "over_budget", "released", "superseded", "dropped"
    value: float | None = None

    @property
    def evaluated(self) -> bool:
        """Whether the worker evaluated anything (refusals and redundant copies are no evaluations)."""
        return self.state not in ("over_budget", "superseded")


def run_one_trial(
    study: optuna.Study,
    spec: StudySpec,
    objective: Objective,
    *,
    worker_id: str,
    stop: StopSignal,
    precision: str = "fp32",
    guard: StorageGuard | None = None,
    held: lineage.Held | None = None,
    waiting: bool = True,
) -> TrialOutcome:
    """Take or create a trial and run it. A trial that someone else ended meanwhile (this worker was
    paused past the grace period, or cut off from the database) is dropped, not overwritten.

    ``waiting``: whether the study had an enqueued (WAITING) trial a moment ago; it is taken first.
    """
    trial = ask(study, waiting=waiting)
    return run_held(
        study, trial, lambda: _claimed(study, spec, objective, trial, worker_id, stop, precision),
        guard=guard, held=held,
    )  # fmt: skip


def run_held(
    study: optuna.Study,
    trial: optuna.Trial,
    body: Callable[[], TrialOutcome],
    *,
    guard: StorageGuard | None,
    held: lineage.Held | None,
) -> TrialOutcome:
    """Run ``body`` for a claimed trial (search trial or validation job): held for release on a signal,
    with a heartbeat; a trial someone else ended meanwhile is dropped, not overwritten."""
    if held is not None:
        held.hold(study, trial)
    with Heartbeat(study_storage(study), trial_id(trial), guard=guard):
        try:
            return body()
        except (UpdateFinishedTrialError, ValueError):  # ValueError: Optuna's "Cannot tell a FAIL trial"
            if not lineage.taken_over(study, trial):
                raise
            return TrialOutcome(trial.number, "dropped")


def _claimed(
    study: optuna.Study,
    spec: StudySpec,
    objective: Objective,
    trial: optuna.Trial,
    worker_id: str,
    stop: StopSignal,
    precision: str,
) -> TrialOutcome:
    if not lineage.take(study, trial):
        return TrialOutcome(trial.number, "superseded")
    if not within_budget(ask_time_trials(study), trial.number, spec.n_trials):
        fail_trial(study, trial, OVER_BUDGET, "the study's budget was claimed by other workers first")
        return TrialOutcome(trial.number, "over_budget")
    trial.set_user_attr(PRECISION_ATTR, precision)  # first: a trial with a worker has its precision
    trial.set_user_attr(WORKER_ATTR, worker_id)
    try:
        return _evaluate(study, trial, spec, objective, stop)
    except WorkerStopped:
        return TrialOutcome(trial.number, "released" if release_trial(study, trial) else "dropped")


def _evaluate(
    study: optuna.Study, trial: optuna.Trial, spec: StudySpec, objective: Objective, stop: StopSignal
) -> TrialOutcome:
    schedule = spec.space.suggest(trial)
    is_reference = trial.user_attrs.get(ROLE_ATTR) == "baseline"  # the baseline is never pruned
    value: float | None = None
    try:
        steps = iter(objective.evaluate(schedule))
        while True:
            with stop.interruptible():
                item = next(steps, None)
            if item is None:
                break
            n_samples, value = item
            trial.report(value, step=n_samples)
            _log.info(
                "%s: trial %d rho=(%.4g, %.4g) at %d samples: %.6g", study.study_name, trial.number,
                schedule.rho_bottom, schedule.rho_top, n_samples, value,
            )  # fmt: skip
            if not is_reference and trial.should_prune():
                tell(study, trial, state=TrialState.PRUNED)
                return TrialOutcome(trial.number, "pruned", value)
    except (EvaluationError, torch.OutOfMemoryError) as exc:
        fail_trial(study, trial, EVALUATION_FAILED, f"{type(exc).__name__}: {exc}")
        return TrialOutcome(trial.number, "failed")
    if value is None or not math.isfinite(value):
        fail_trial(study, trial, EVALUATION_FAILED, f"the objective gave no finite value ({value})")
        return TrialOutcome(trial.number, "failed")
    tell(study, trial, value)
    return TrialOutcome(trial.number, "complete", value)


def fail_trial(study: optuna.Study, trial: optuna.Trial, kind: str, reason: str) -> None:
    _log.info("trial %d failed (%s): %s", trial.number, kind, reason)
    trial.set_user_attr(FAIL_ATTR, {"kind": kind, "reason": reason[:500]})
    tell(study, trial, state=TrialState.FAIL)


def release_trial(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Give the trial back (SIGINT/SIGTERM): its copy is enqueued first, then it is failed as released.
    False if a sweep re-runs it already."""
    return lineage.release(study, trial, "the worker was stopped")
