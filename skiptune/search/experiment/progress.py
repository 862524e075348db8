"""Progress of an experiment: units done out of units due, per stage, and the seconds of work left.

A *stage* is one Optuna study of the experiment: the main search, a grow phase, a validation round
(and any later kind of companion: its label is the companion's kind, ``records.parse_companion``). Its
*units* are search trials counted against the phase's budget, or the round's jobs. ``stages`` lists the
stages that exist; ``coming`` the validation round that will exist once the search is done (the
baseline and the top-K candidates), so an estimate made during the search covers the validation too.
Growth is not projected: whether it happens depends on the validated answer.

The estimate assumes a unit's time is proportional to its samples x NFE (the sampler's network calls),
with one rate measured over every finished unit: ``seconds_left`` = (samples x NFE still to evaluate)
x (seconds per sample-NFE so far), less what running units have done already.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime

import optuna
from optuna.trial import FrozenTrial, TrialState

from skiptune.search import records as rec
from skiptune.search.budget import counts_against_budget
from skiptune.search.experiment.state import Experiment, load_experiment, param_key
from skiptune.search.lineage import place
from skiptune.search.study import find_studies

SEARCH_STAGE = "search"
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True)
class StageProgress:
    """One stage of one experiment, as the database holds it now."""

    stage: str  # "search" (the main study), else the companion's kind: "grow", "validation", ...
    study: str  # the experiment's main study
    nfe: int
    done: int  # units finished (complete, pruned, or failed in evaluation)
    total: int  # units due: the phase's budget, the round's jobs
    running: int
    unit_samples: int  # samples a full unit evaluates
    busy_s: float  # seconds its finished units took
    samples_done: int  # samples its finished units evaluated
    running_s: float  # seconds its running units have run so far
    projected: bool = False  # not created yet: the validation round to come


def stages(exp: Experiment, *, now: datetime | None = None) -> list[StageProgress]:
    """The experiment's stages that exist, in the order they were created."""
    now = now or datetime.now()
    spec = exp.main.spec
    out = []
    for phase in [*exp.phases, *exp.windows]:
        kind = SEARCH_STAGE if phase.name == exp.main.name else phase.kind
        counting = [t for t in phase.trials if counts_against_budget(t)]
        out.append(_stage(kind, exp, counting, phase.budget, spec.objective.n_samples, now, by=place))
    n_holdout = exp.settings.n_samples if exp.settings is not None else 0
    for r in exp.rounds:
        jobs = [t for t in r.trials if t.state != TrialState.FAIL or _failed_in_evaluation(t)]
        keys = {param_key(rec.fixed_params(t)) for t in r.trials}
        out.append(_stage(_kind(exp, r.name), exp, jobs, len(keys), n_holdout, now, by=_job_key))
    return out


def coming(exp: Experiment) -> list[StageProgress]:
    """The validation round that will follow the search (the baseline and top-K), while searching."""
    if exp.settings is None or exp.rounds or exp.search_done:
        return []
    due = 1 + min(exp.settings.top_k, exp.phases[0].budget - 1)  # the baseline is one of the trials
    return [
        StageProgress(rec.VALIDATION, exp.main.name, exp.main.spec.nfe, 0, due, 0,
                      exp.settings.n_samples, 0.0, 0, 0.0, projected=True)
    ]  # fmt: skip


def seconds_per_sample_nfe(progress: Sequence[StageProgress]) -> float | None:
    """The measured rate over every finished unit (None before the first one finished)."""
    work = sum(p.samples_done * p.nfe for p in progress)
    return sum(p.busy_s for p in progress) / work if work else None


def seconds_left(progress: Sequence[StageProgress], rate: float) -> float:
    """Seconds of work left in ``progress`` at ``rate`` (seconds per sample-NFE), one unit at a time."""
    left = 0.0
    for p in progress:
        per_unit = p.samples_done / p.done if p.done else p.unit_samples  # pruned trials cost less
        left += max(0, p.total - p.done) * per_unit * p.nfe * rate - p.running_s
    return max(0.0, left)


def _stage(
    kind: str,
    exp: Experiment,
    trials: list[FrozenTrial],
    total: int,
    unit_samples: int,
    now: datetime,
    *,
    by: Callable[[FrozenTrial], Hashable],
) -> StageProgress:
    finished = [t for t in trials if t.state in _FINISHED]
    running = [t for t in trials if t.state == TrialState.RUNNING]
    return StageProgress(
        stage=kind,
        study=exp.main.name,
        nfe=exp.main.spec.nfe,
        done=len({by(t) for t in finished}),
        total=total,
        running=len(running),
        unit_samples=unit_samples,
        busy_s=sum(_seconds(t) for t in finished),
        samples_done=sum(_samples(t, unit_samples) for t in finished),
        running_s=sum(_since(t, now) for t in running),
    )


def _kind(exp: Experiment, name: str) -> str:
    parsed = rec.parse_companion(exp.main.name, name)
    return parsed[0] if parsed is not None else name.rsplit("/", 1)[-1]


def _job_key(t: FrozenTrial) -> tuple[float, ...]:
    return param_key(rec.fixed_params(t))


def _failed_in_evaluation(t: FrozenTrial) -> bool:
    fail = t.user_attrs.get(rec.FAIL_ATTR)
    return isinstance(fail, dict) and fail.get("kind") == rec.EVALUATION_FAILED


def _seconds(t: FrozenTrial) -> float:
    if t.datetime_start is None or t.datetime_complete is None:
        return 0.0
    return (t.datetime_complete - t.datetime_start).total_seconds()


def _since(t: FrozenTrial, now: datetime) -> float:
    return (now - t.datetime_start).total_seconds() if t.datetime_start is not None else 0.0


def _samples(t: FrozenTrial, full: int) -> int:
    """Samples a finished unit evaluated: its last rung (pruned trials stop early), else a full unit."""
    return int(t.last_step) if t.last_step is not None else full


def progress_of(
    storage: optuna.storages.BaseStorage, *, model: str, nfes: Sequence[int] | None = None
) -> list[StageProgress]:
    """Every stage of the model's experiments (those of ``nfes``), existing and coming."""
    listing = storage.get_all_studies()
    out: list[StageProgress] = []
    for study in find_studies(storage, model=model, nfes=nfes):
        exp = load_experiment(storage, study, listing)
        out += stages(exp) + coming(exp)
    return out
