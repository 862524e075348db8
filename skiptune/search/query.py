"""Queries: the best coefficients per (model, sampler, NFE), and the rows of the summary table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from skiptune.errors import SkiptuneError
from skiptune.search.budget import used_budget
from skiptune.search.experiment.state import UNVALIDATED, Experiment, load_experiment, param_key
from skiptune.search.experiment.validation import NO_GAIN, VALIDATED, Decision
from skiptune.search.records import BASELINE, ROLE_ATTR
from skiptune.search.space import schedule_from_params
from skiptune.search.study import StoredStudy, find_studies
from skiptune.storage import open_storage


@dataclass(frozen=True)
class BestCoefficients:
    """The answer of one study: the recommended pair, how far it is validated, and its evidence.

    ``sigma_window``: None (the pair applies at every noise level) or ``(lo, hi)`` (only for
    ``lo <= sigma <= hi``: the window stage found the pair better there, see ``window``).
    ``status``: ``searching`` / ``validating`` (the pair is the search's best so far, unvalidated),
    ``validated`` (the pair beat the baseline on held-out seeds by more than the threshold in standard
    errors), ``no-gain`` (it did not: the pair is (1, 1)), ``unvalidated`` (a study without validation:
    the search's best). ``value``/``baseline_value`` are on the search's own seeds (biased low for the
    best of many trials); ``holdout_*`` and ``gain*`` are on held-out seeds and are the numbers to trust.
    """

    rho_bottom: float
    rho_top: float
    sigma_window: tuple[float, float] | None
    value: float | None  # search-seed distance of the recommended pair (None: never searched as such)
    baseline_value: float | None  # None until the baseline (1, 1) trial completed
    n_samples: int  # samples behind `value` (the last rung)
    n_trials: int  # trials counted against the budget so far (all phases)
    study_name: str
    status: str = UNVALIDATED
    validated: bool = False  # True for `validated` and `no-gain`: the answer is a held-out decision
    holdout_value: float | None = None  # held-out distance of the recommended pair
    holdout_baseline: float | None = None
    gain: float | None = None  # held-out relative gain over the baseline of the best validated candidate
    gain_se: float | None = None
    holdout_samples: int | None = None
    search_best: dict[str, float] | None = None  # the search's own minimum (unvalidated), for reference
    box: dict[str, list[float]] | None = None  # the latest search box (grown boxes included)
    # the full-range answer (the pair on every sigma) as the validation decided it, when validated:
    # rho_bottom, rho_top, status, holdout_value, gain, gain_se; equal to the answer without a window
    full_range: dict[str, Any] | None = None
    # the window stage's best validated window, won or not: sigma_window, holdout_value, gain and gain_se
    # over the baseline, gain_vs_full and gain_vs_full_se over the full-range answer, chosen
    window: dict[str, Any] | None = None
    # the prompt-alignment guard (studies created with --clip-guard, once validated): the held-out mean
    # CLIP score of the baseline, and the change (candidate - baseline, points) with its s.e. for the
    # candidate `gain` describes; the pairs the guard left out (their CLIP score dropped significantly)
    clip_baseline: float | None = None
    clip_change: float | None = None
    clip_change_se: float | None = None
    clip_rejected: list[dict[str, float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pick_study(
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
            f"objectives, search spaces or seeds): {', '.join(s.name for s in studies)}; pick one with "
            "--study NAME (study_name= in Python)"
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
    """The recommended (rho_bottom, rho_top) of the study for (model, sampler, NFE), with its status;
    ``storage``: URL or storage."""
    storage = _storage(storage)
    study = pick_study(storage, model, nfe, sampler, study_name)
    answer = answer_of(load_experiment(storage, study))
    if answer is None:
        raise SkiptuneError(
            f"study {study.name!r} has no complete trial yet; "
            f"run workers with: skiptune worker --model {model} --nfe {nfe}"
        )
    return answer


def answer_of(exp: Experiment) -> BestCoefficients | None:
    """The experiment's answer now (None before any trial completed)."""
    trials = exp.search_trials()
    best = _best(trials)
    if best is None:
        return None
    status = exp.status()
    decision = exp.decision() if status in (VALIDATED, NO_GAIN) else None
    params = decision.params if decision is not None else dict(best.params)
    schedule = schedule_from_params(params)
    chosen = _search_value([*trials, *(t for w in exp.windows for t in w.trials)], params)
    compared = decision.best if decision is not None else None
    holdout_value = None
    if decision is not None and compared is not None:
        holdout_value = compared.value if decision.status == VALIDATED else compared.baseline_value
    return BestCoefficients(
        rho_bottom=schedule.rho_bottom,
        rho_top=schedule.rho_top,
        sigma_window=schedule.sigma_window,
        value=chosen.value if chosen is not None else None,
        baseline_value=_baseline_value(trials),
        n_samples=int(chosen.last_step) if chosen is not None and chosen.last_step is not None else 0,
        n_trials=sum(used_budget(p.trials) for p in exp.phases),
        study_name=exp.main.name,
        status=status,
        validated=decision is not None,
        holdout_value=holdout_value,
        holdout_baseline=compared.baseline_value if compared is not None else None,
        gain=compared.relative_gain if compared is not None else None,
        gain_se=compared.relative_gain_se if compared is not None else None,
        holdout_samples=compared.n_samples if compared is not None else None,
        search_best={**{k: float(v) for k, v in best.params.items()}, "value": float(best.value)},  # type: ignore[arg-type]
        box=exp.box.to_dict(),
        full_range=_full_range(exp.full_range_decision()) if decision is not None else None,
        window=_window(decision) if decision is not None else None,
        **_clip(exp, decision),
    )


def _clip(exp: Experiment, decision: Decision | None) -> dict[str, Any]:
    """The guard's fields of the answer (none for a study without the guard, or before its decision)."""
    if decision is None or exp.settings is None or exp.settings.clip_guard is None:
        return {}
    best = decision.best
    return {
        "clip_baseline": best.clip_baseline,
        "clip_change": best.clip_change,
        "clip_change_se": best.clip_change_se,
        "clip_rejected": [dict(c.params) for c in decision.clip_rejected],
    }


def _full_range(decision: Decision | None) -> dict[str, Any] | None:
    if decision is None:
        return None
    schedule = schedule_from_params(decision.params)
    best = decision.best
    return {
        "rho_bottom": schedule.rho_bottom,
        "rho_top": schedule.rho_top,
        "status": decision.status,
        "holdout_value": best.value if decision.status == VALIDATED else best.baseline_value,
        "gain": best.relative_gain,
        "gain_se": best.relative_gain_se,
    }


def _window(decision: Decision) -> dict[str, Any] | None:
    window, versus = decision.window, decision.versus_full
    if window is None or versus is None:
        return None
    lo_hi = schedule_from_params(window.params).sigma_window
    return {
        "sigma_window": list(lo_hi) if lo_hi else None,
        "rho_bottom": window.params["rho_bottom"],
        "rho_top": window.params["rho_top"],
        "holdout_value": window.value,
        "gain": window.relative_gain,
        "gain_se": window.relative_gain_se,
        "gain_vs_full": versus.relative_gain,
        "gain_vs_full_se": versus.relative_gain_se,
        "chosen": decision.best is window,
    }


def _search_value(trials: Sequence[FrozenTrial], params: dict[str, Any]) -> FrozenTrial | None:
    """The complete search trial with these params (the baseline's, for (1, 1))."""
    key = param_key(params)
    return next(
        (t for t in trials if t.state == TrialState.COMPLETE and param_key(t.params) == key and t.params),
        None,
    )


def _best(trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return min(complete, key=lambda t: float(t.value), default=None)  # type: ignore[arg-type]


def _baseline_value(trials: Sequence[FrozenTrial]) -> float | None:
    for t in trials:
        if t.state == TrialState.COMPLETE and t.user_attrs.get(ROLE_ATTR) == BASELINE:
            return float(t.value)  # type: ignore[arg-type]
    return None


def summary_rows(
    storage: str | optuna.storages.BaseStorage, model: str | None = None
) -> list[dict[str, Any]]:
    """One row per study (of ``model``, or all): the answer, its status and headline gain, progress.

    ``improvement`` is the headline gain: on held-out seeds once validated (0 for ``no-gain``), else the
    search's own (unvalidated, biased) gain, as ``improvement_source`` says.
    """
    storage = _storage(storage)
    rows = []
    listing = storage.get_all_studies()
    for study in find_studies(storage, model=model):
        exp = load_experiment(storage, study, listing)
        trials = exp.search_trials()
        answer = answer_of(exp)
        rows.append(
            {
                "study": study.name,
                "model": study.spec.model,
                "search": study.spec.search,
                "sampler": study.spec.sampler,
                "nfe": study.spec.nfe,
                **_answer_columns(answer),
                "n_complete": sum(t.state == TrialState.COMPLETE for t in trials),
                "n_pruned": sum(t.state == TrialState.PRUNED for t in trials),
                "n_running": sum(t.state == TrialState.RUNNING for t in trials),
                "n_waiting": sum(t.state == TrialState.WAITING for t in trials),
                "n_failed": sum(t.state == TrialState.FAIL for t in trials),
                "n_trials": sum(used_budget(p.trials) for p in exp.phases),
                "budget": sum(p.budget for p in exp.phases),
                "status": exp.status(),
            }
        )
    return rows


def _answer_columns(answer: BestCoefficients | None) -> dict[str, Any]:
    if answer is None:
        keys = ("rho_bottom", "rho_top", "sigma_window", "value", "improvement", "gain", "gain_se")
        return {**dict.fromkeys(keys), "baseline_value": None, "improvement_source": None,
                "holdout_samples": None, "validated": False, "search_best": None,
                "full_range": None, "window": None, "clip_change": None, "clip_change_se": None}  # fmt: skip
    if answer.validated:
        improvement = answer.gain if answer.status == VALIDATED else 0.0
        source = "held-out"
    else:
        base, value = answer.baseline_value, answer.value
        improvement = (base - value) / base if base and value is not None else None
        source = "search (unvalidated)"
    return {
        "rho_bottom": answer.rho_bottom,
        "rho_top": answer.rho_top,
        "sigma_window": list(answer.sigma_window) if answer.sigma_window else None,
        "value": answer.value,
        "baseline_value": answer.baseline_value,
        "improvement": improvement,
        "improvement_source": source,
        "gain": answer.gain,
        "gain_se": answer.gain_se,
        "holdout_samples": answer.holdout_samples,
        "validated": answer.validated,
        "search_best": answer.search_best,
        "full_range": answer.full_range,
        "window": answer.window,
        "clip_change": answer.clip_change,
        "clip_change_se": answer.clip_change_se,
    }
