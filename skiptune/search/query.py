"""Queries: the best coefficients per (model, sampler, NFE), and the rows of the summary table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from skiptune.errors import SkiptuneError
from skiptune.search.budget import fresh_trials, used_budget
from skiptune.search.space import schedule_from_params
from skiptune.search.study import ROLE_ATTR, StoredStudy, find_studies
from skiptune.storage import open_storage


@dataclass(frozen=True)
class BestCoefficients:
    """The best pair found for one study, with the untuned baseline measured the same way."""

    rho_bottom: float
    rho_top: float
    sigma_window: tuple[float, float] | None
    value: float
    baseline_value: float | None  # None until the baseline (1, 1) trial completed
    n_samples: int  # samples behind `value` (the last rung)
    n_trials: int  # trials counted against the budget so far
    study_name: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pick_study(
    storage: optuna.storages.BaseStorage, model: str, nfe: int, sampler: str, study_name: str | None
) -> StoredStudy:
    studies = find_studies(storage, model=model, sampler=sampler, nfes=[nfe])
    if study_name is not None:
        studies = [s for s in studies if s.name == study_name]
    if not studies:
        known = sorted({f"{s.spec.model}/{s.spec.sampler}/nfe={s.spec.nfe}" for s in find_studies(storage)})
        raise SkiptuneError(
            f"no study for model {model!r}, sampler {sampler!r}, NFE {nfe}"
            + (f" named {study_name!r}" if study_name else "")
            + f"; studies in this storage: {', '.join(known) or '(none)'}; "
            "create one with `skiptune study create`"
        )
    if len(studies) > 1:
        raise SkiptuneError(
            f"{len(studies)} studies match model {model!r}, sampler {sampler!r}, NFE {nfe} (different "
            f"objectives or search spaces): {', '.join(s.name for s in studies)}; pick one with --study NAME"
        )
    return studies[0]


def _storage(storage: str | optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    return open_storage(storage) if isinstance(storage, str) else storage


def best_coefficients(
    storage: str | optuna.storages.BaseStorage,
    model: str,
    nfe: int,
    sampler: str = "heun",
    *,
    study_name: str | None = None,
) -> BestCoefficients:
    """The best (rho_bottom, rho_top) of the study for (model, sampler, NFE); ``storage``: URL or storage."""
    storage = _storage(storage)
    study = _pick_study(storage, model, nfe, sampler, study_name)
    trials = fresh_trials(storage, study.study_id)
    best = _best(trials)
    if best is None:
        raise SkiptuneError(
            f"study {study.name!r} has no complete trial yet ({len(trials)} trials); "
            f"run workers with: skiptune worker --model {model} --nfe {nfe}"
        )
    schedule = schedule_from_params(best.params)
    return BestCoefficients(
        rho_bottom=schedule.rho_bottom,
        rho_top=schedule.rho_top,
        sigma_window=schedule.sigma_window,
        value=float(best.value),  # type: ignore[arg-type]
        baseline_value=_baseline_value(trials),
        n_samples=int(best.last_step) if best.last_step is not None else 0,
        n_trials=used_budget(trials),
        study_name=study.name,
    )


def _best(trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return min(complete, key=lambda t: float(t.value), default=None)  # type: ignore[arg-type]


def _baseline_value(trials: Sequence[FrozenTrial]) -> float | None:
    for t in trials:
        if t.state == TrialState.COMPLETE and t.user_attrs.get(ROLE_ATTR) == "baseline":
            return float(t.value)  # type: ignore[arg-type]
    return None


def summary_rows(
    storage: str | optuna.storages.BaseStorage, model: str | None = None
) -> list[dict[str, Any]]:
    """One row per study (of ``model``, or all): best pair and value vs baseline, budget progress."""
    storage = _storage(storage)
    rows = []
    for study in find_studies(storage, model=model):
        trials = fresh_trials(storage, study.study_id)
        best = _best(trials)
        baseline = _baseline_value(trials)
        schedule = schedule_from_params(best.params) if best is not None else None
        rows.append(
            {
                "study": study.name,
                "model": study.spec.model,
                "search": study.spec.search,
                "sampler": study.spec.sampler,
                "nfe": study.spec.nfe,
                "rho_bottom": schedule.rho_bottom if schedule else None,
                "rho_top": schedule.rho_top if schedule else None,
                "sigma_window": list(schedule.sigma_window) if schedule and schedule.sigma_window else None,
                "value": float(best.value) if best is not None else None,  # type: ignore[arg-type]
                "baseline_value": baseline,
                "improvement": (
                    (baseline - float(best.value)) / baseline  # type: ignore[arg-type]
                    if best is not None and baseline
                    else None
                ),
                "n_complete": sum(t.state == TrialState.COMPLETE for t in trials),
                "n_pruned": sum(t.state == TrialState.PRUNED for t in trials),
                "n_running": sum(t.state == TrialState.RUNNING for t in trials),
                "n_waiting": sum(t.state == TrialState.WAITING for t in trials),
                "n_failed": sum(t.state == TrialState.FAIL for t in trials),
                "n_trials": used_budget(trials),
                "budget": study.spec.n_trials,
            }
        )
    return rows
