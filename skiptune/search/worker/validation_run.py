"""One validation job, start to end: take an enqueued job, evaluate it on the held-out seeds, record it.

Jobs are ordinary Optuna trials of a validation round (``{main}/validate{r}``), so they share the search
trials' machinery: a heartbeat while evaluating, a dead worker's job failed and re-enqueued by the stale
sweep (``stale.py``, ``lineage.py``), a stopping worker's job given back, a job ended elsewhere while
this worker was paused dropped. A job is only ever *taken* (never created by
``ask``), so each one is evaluated once however many workers race for it.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from skiptune.errors import EvaluationError
from skiptune.search import lineage
from skiptune.search import records as rec
from skiptune.search.experiment.state import job_distribution
from skiptune.search.settings import ValidationSettings
from skiptune.search.space import schedule_from_params
from skiptune.search.worker.resilience import StorageGuard
from skiptune.search.worker.stopping import StopSignal, WorkerStopped
from skiptune.search.worker.trial_run import Objective, TrialOutcome, fail_trial, release_trial, run_held

_log = logging.getLogger(__name__)


def run_validation_job(
    study: optuna.Study,
    settings: ValidationSettings,
    objective: Objective,
    *,
    worker_id: str,
    stop: StopSignal,
    precision: str = "fp32",
    guard: StorageGuard | None = None,
    held: lineage.Held | None = None,
) -> TrialOutcome | None:
    """Evaluate one waiting job of the round ``study``; None if another worker took the last one first.

    What the job needs besides the objective (the CLIP guard's scorer) is loaded before a job is taken:
    a worker that cannot load it stops with one line and leaves the jobs waiting for another worker."""
    clip = _clip_scorer(settings, objective)
    trial = rec.pop_waiting(study)
    if trial is None:
        return None
    return run_held(
        study, trial, lambda: _run_job(study, trial, settings, objective, worker_id, stop, precision, clip),
        guard=guard, held=held,
    )  # fmt: skip


def _clip_scorer(settings: ValidationSettings, objective: Objective) -> dict[str, Any]:
    """The prompt-alignment guard's keyword for ``block_distances``: the CLIP scorer of the study's folder
    (loaded once per process and device), or nothing for a study without the guard."""
    if settings.clip_guard is None:
        return {}
    from skiptune.objectives.clip_score import cached_clip_scorer

    device = str(getattr(objective, "device", "cpu"))
    return {"clip": cached_clip_scorer(settings.clip_guard, settings.clip_sha256, device)}


def _run_job(
    study: optuna.Study,
    trial: optuna.Trial,
    settings: ValidationSettings,
    objective: Objective,
    worker_id: str,
    stop: StopSignal,
    precision: str,
    clip: dict[str, Any],
) -> TrialOutcome:
    if not lineage.take(study, trial):
        return TrialOutcome(trial.number, "superseded")
    storage = rec.study_storage(study)
    params = rec.fixed_params(storage.get_trial(rec.trial_id(trial)))
    for name, value in params.items():  # recorded as ordinary params (optuna-dashboard shows them)
        trial.suggest_float(name, job_distribution(float(value)).low, job_distribution(float(value)).high)
    trial.set_user_attr(rec.PRECISION_ATTR, precision)
    trial.set_user_attr(rec.WORKER_ATTR, worker_id)
    try:
        with stop.interruptible():
            result = objective.block_distances(
                schedule_from_params(params),
                seed_base=settings.seed_base,
                n_samples=settings.n_samples,
                blocks=settings.blocks,
                **clip,
            )
    except WorkerStopped:
        return TrialOutcome(trial.number, "released" if release_trial(study, trial) else "dropped")
    except (EvaluationError, torch.OutOfMemoryError) as exc:
        fail_trial(study, trial, rec.EVALUATION_FAILED, f"{type(exc).__name__}: {exc}")
        return TrialOutcome(trial.number, "failed")
    trial.set_user_attr(rec.HOLDOUT_ATTR, result.to_dict())
    rec.tell(study, trial, result.value, state=TrialState.COMPLETE)
    clip_means = result.clip_means()
    mean = "" if clip_means is None else f", CLIP score {clip_means[0]:.4g}"
    _log.info("validation job %d %s: held-out %.6g%s", trial.number, params, result.value, mean)
    return TrialOutcome(trial.number, "validated", result.value)
