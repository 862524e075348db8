"""An experiment: a main study, its grow phases and validation rounds, their state and next step.

State is read from the database every time (never cached across workers), and every transition is a
study creation, which the database makes unique by name: whichever worker notices first that the search
is done creates the validation round (or grow phase) and fills it; the others find it made. A companion
is "ready" once its kind attribute is written, last; one that stays unready past the grace period (its
creator died in between) is completed by the next worker that sees it.

    phases done? -- no --> searching
        | yes
    top-K candidates (all phases) + baseline not yet validated? -- yes --> new round --> validating
        | no
    rounds done? -- no --> validating
        | yes
    decision; best at a growable edge and growth budget left? -- yes --> new grow phase --> searching
        | no
    validated / no-gain
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import FloatDistribution
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState, create_trial

from skiptune.objectives.holdout import BlockDistances
from skiptune.search import records as rec
from skiptune.search.budget import used_budget
from skiptune.search.experiment.growth import grown_space
from skiptune.search.experiment.validation import Decision, ValidationSettings, decide
from skiptune.search.space import BASELINE_PARAMS, SearchSpace
from skiptune.search.study import StoredStudy

_log = logging.getLogger(__name__)

SEARCHING, VALIDATING, UNVALIDATED = "searching", "validating", "unvalidated"
_ACTIVE = (TrialState.WAITING, TrialState.RUNNING)


@dataclass(frozen=True)
class Phase:
    """A search phase: the main study (index 0) or a grow phase."""

    name: str
    study_id: int
    index: int
    space: SearchSpace
    budget: int
    trials: list[FrozenTrial]

    @property
    def done(self) -> bool:
        return used_budget(self.trials) >= self.budget and not any(t.state in _ACTIVE for t in self.trials)


@dataclass(frozen=True)
class Round:
    """A validation round: one enqueued trial per candidate."""

    name: str
    study_id: int
    index: int
    trials: list[FrozenTrial]

    @property
    def done(self) -> bool:
        return not any(t.state in _ACTIVE for t in self.trials)


@dataclass
class Experiment:
    main: StoredStudy
    settings: ValidationSettings | None
    phases: list[Phase]
    rounds: list[Round]
    unready: list[tuple[str, int]] = field(default_factory=list)  # companions still being created

    @property
    def search_done(self) -> bool:
        return all(p.done for p in self.phases)

    def search_trials(self) -> list[FrozenTrial]:
        return [t for p in self.phases for t in p.trials]

    def holdout_results(self) -> dict[tuple[float, ...], tuple[dict[str, float], BlockDistances]]:
        """Validated params -> (params, held-out distances), from every round's complete jobs."""
        out: dict[tuple[float, ...], tuple[dict[str, float], BlockDistances]] = {}
        for r in self.rounds:
            for t in r.trials:
                if t.state == TrialState.COMPLETE and rec.HOLDOUT_ATTR in t.user_attrs:
                    params = {k: float(v) for k, v in rec.fixed_params(t).items()}
                    out.setdefault(
                        param_key(params), (params, BlockDistances.from_dict(t.user_attrs[rec.HOLDOUT_ATTR]))
                    )
        return out

    def jobs(self) -> set[tuple[float, ...]]:
        """Params of every job ever enqueued (evaluated, running, waiting or failed in evaluation)."""
        return {param_key(rec.fixed_params(t)) for r in self.rounds for t in r.trials}

    def decision(self) -> Decision | None:
        if self.settings is None:
            return None
        results = self.holdout_results()
        base = results.pop(param_key(BASELINE_PARAMS), None)
        if base is None or not results:
            return None
        return decide(base[0], base[1], list(results.values()), threshold=self.settings.threshold)

    def status(self) -> str:
        if self.settings is None:
            return UNVALIDATED
        if not self.search_done:
            return SEARCHING
        if pending_candidates(self) or not all(r.done for r in self.rounds) or self.unready:
            return VALIDATING
        decision = self.decision()
        return decision.status if decision is not None else VALIDATING


def param_key(params: Mapping[str, Any]) -> tuple[float, ...]:
    """Params as a hashable key (rounded: the same candidate from two phases is one candidate)."""
    return tuple(round(float(params[k]), 6) for k in sorted(params))


def top_candidates(trials: list[FrozenTrial], k: int) -> list[dict[str, float]]:
    """The ``k`` best distinct params among complete search trials (the baseline is validated anyway)."""
    complete = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE and t.value is not None),
        key=lambda t: float(t.value),  # type: ignore[arg-type]
    )
    out: dict[tuple[float, ...], dict[str, float]] = {}
    baseline = param_key(BASELINE_PARAMS)
    for t in complete:
        params = {n: float(v) for n, v in t.params.items()}
        key = param_key(params)
        if key != baseline and key not in out:
            out[key] = params
        if len(out) == k:
            break
    return list(out.values())


def pending_candidates(exp: Experiment) -> list[dict[str, float]]:
    """Top-K candidates and the baseline that no round has a job for yet."""
    assert exp.settings is not None
    jobs = exp.jobs()
    wanted = [dict(BASELINE_PARAMS), *top_candidates(exp.search_trials(), exp.settings.top_k)]
    return [p for p in wanted if param_key(p) not in jobs]


# ------------------------------------------------------------------------------------------ loading


def load_experiment(
    storage: optuna.storages.BaseStorage,
    main: StoredStudy,
    studies: list[FrozenStudy] | None = None,
    trials: Mapping[int, list[FrozenTrial]] | None = None,
) -> Experiment:
    """The experiment of ``main`` as the database holds it now (``studies``: one listing shared by
    several experiments, read just before; ``trials``: their trials by study id, read just before,
    see ``companion_ids`` and ``records.read_many``)."""

    def read(sid: int) -> list[FrozenTrial]:
        return trials[sid] if trials is not None and sid in trials else rec.fresh_trials(storage, sid)

    listed = [f.user_attrs for f in studies or () if f._study_id == main.study_id]
    attrs = listed[0] if listed else storage.get_study_user_attrs(main.study_id)  # the listing has them
    raw = attrs.get(rec.VALIDATION_ATTR)
    settings = ValidationSettings.from_dict(raw) if isinstance(raw, dict) else None
    budget = int(attrs.get(rec.BUDGET_ATTR, main.spec.n_trials))
    phases = [Phase(main.name, main.study_id, 0, main.spec.space, budget, read(main.study_id))]
    rounds: list[Round] = []
    unready: list[tuple[str, int]] = []
    for frozen in storage.get_all_studies() if studies is None else studies:
        if not rec.is_companion(main.name, frozen.study_name):
            continue
        sid, cattrs = frozen._study_id, frozen.user_attrs
        kind = cattrs.get(rec.KIND_ATTR)
        if cattrs.get(rec.PARENT_ATTR) != main.name or kind not in (rec.GROW, rec.VALIDATION):
            unready.append((frozen.study_name, sid))
        elif kind == rec.GROW:
            space = SearchSpace.from_dict(cattrs[rec.SPACE_ATTR])
            phases.append(Phase(frozen.study_name, sid, int(cattrs[rec.PHASE_ATTR]), space,
                                int(cattrs[rec.PHASE_BUDGET_ATTR]), read(sid)))  # fmt: skip
        else:
            rounds.append(Round(frozen.study_name, sid, int(cattrs[rec.PHASE_ATTR]), read(sid)))
    phases.sort(key=lambda p: p.index)
    rounds.sort(key=lambda r: r.index)
    return Experiment(main, settings, phases, rounds, unready)


def companion_ids(main: StoredStudy, studies: list[FrozenStudy]) -> list[int]:
    """The ids of the studies in ``studies`` whose trials ``load_experiment`` reads for ``main``."""
    return [main.study_id, *(f._study_id for f in studies if rec.is_companion(main.name, f.study_name))]


# ------------------------------------------------------------------------------------------ transitions

_first_seen_unready: dict[str, float] = {}


def advance(storage: optuna.storages.BaseStorage, exp: Experiment, *, grace: float = 120.0) -> bool:
    """Take the experiment's next step if one is due; True if this call created or completed something."""
    if exp.settings is None:
        return False
    for name, sid in exp.unready:
        first = _first_seen_unready.setdefault(name, time.monotonic())
        if time.monotonic() - first > grace:
            _log.warning("completing %s: its creator died before it was ready", name)
            _fill_unready(storage, exp, name, sid)
            return True
    if exp.unready or not exp.search_done:
        return False
    pending = pending_candidates(exp)
    if pending:
        return create_round(storage, exp, pending) is not None
    if not all(r.done for r in exp.rounds):
        return False
    return _maybe_grow(storage, exp)


def _create_companion(storage: optuna.storages.BaseStorage, name: str) -> int | None:
    try:
        return storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], name)
    except optuna.exceptions.DuplicatedStudyError:
        return None  # another worker made it first


def create_round(
    storage: optuna.storages.BaseStorage, exp: Experiment, jobs: list[dict[str, float]]
) -> str | None:
    """Create the next validation round with ``jobs``; its name, or None if another worker made it first."""
    index = len(exp.rounds) + len(exp.unready)
    name = rec.companion_name(exp.main.name, rec.VALIDATION, index)
    sid = _create_companion(storage, name)
    if sid is None:
        return None
    _fill_round(storage, exp.main.name, name, sid, index, jobs)
    _log.info("validation round %s: %d jobs", name, len(jobs))
    return name


def _fill_round(
    storage: optuna.storages.BaseStorage,
    main: str,
    name: str,
    sid: int,
    index: int,
    jobs: list[dict[str, float]],
) -> None:
    study = optuna.load_study(study_name=name, storage=storage)
    have = {param_key(rec.fixed_params(t)) for t in rec.fresh_trials(storage, sid)}
    for params in jobs:
        if param_key(params) not in have:
            role = rec.BASELINE if param_key(params) == param_key(BASELINE_PARAMS) else rec.CANDIDATE
            study.enqueue_trial(params, user_attrs={rec.ROLE_ATTR: role})
    storage.set_study_user_attr(sid, rec.PARENT_ATTR, main)
    storage.set_study_user_attr(sid, rec.PHASE_ATTR, index)
    storage.set_study_user_attr(sid, rec.KIND_ATTR, rec.VALIDATION)  # last: the round is ready


def growth_plan(exp: Experiment) -> tuple[SearchSpace, int] | None:
    """The grown box and its trial budget, if the validated best presses against a growable edge."""
    decision = exp.decision()
    if exp.settings is None or decision is None:
        return None
    left = exp.settings.growth_budget - sum(p.budget for p in exp.phases[1:])
    space = grown_space(exp.phases[-1].space, decision.best.params, edge=exp.settings.edge)
    if space is None or left <= 0:
        return None
    return space, min(left, max(1, math.ceil(exp.settings.growth_budget / 2)))


def _maybe_grow(storage: optuna.storages.BaseStorage, exp: Experiment) -> bool:
    plan = growth_plan(exp)
    if plan is None:
        return False
    space, budget = plan
    index = len(exp.phases)
    name = rec.companion_name(exp.main.name, rec.GROW, index)
    sid = _create_companion(storage, name)
    if sid is None:
        return False
    _fill_grow(storage, exp, name, sid, index, space, budget)
    _log.info("growing the box of %s to %s (%d trials)", exp.main.name, space.to_dict(), budget)
    return True


def _fill_grow(
    storage: optuna.storages.BaseStorage,
    exp: Experiment,
    name: str,
    sid: int,
    index: int,
    space: SearchSpace,
    budget: int,
) -> None:
    """Copy every finished trial of the earlier phases in as priors (TPE learns from them), then the attrs."""
    study = optuna.load_study(study_name=name, storage=storage)
    dists = space.distributions()
    have = {t.user_attrs.get("skiptune_copied_from") for t in rec.fresh_trials(storage, sid)}
    for phase in exp.phases:
        for t in phase.trials:
            origin = f"{phase.name}#{t.number}"
            if t.state not in (TrialState.COMPLETE, TrialState.PRUNED) or origin in have:
                continue
            if set(t.params) != set(dists):
                continue
            study.add_trial(
                create_trial(
                    state=t.state, value=t.value if t.state == TrialState.COMPLETE else None,
                    params=dict(t.params), distributions=dict(dists),
                    intermediate_values=dict(t.intermediate_values),
                    user_attrs={rec.ROLE_ATTR: rec.PRIOR, "skiptune_copied_from": origin},
                )
            )  # fmt: skip
    storage.set_study_user_attr(sid, rec.PARENT_ATTR, exp.main.name)
    storage.set_study_user_attr(sid, rec.PHASE_ATTR, index)
    storage.set_study_user_attr(sid, rec.SPACE_ATTR, space.to_dict())
    storage.set_study_user_attr(sid, rec.PHASE_BUDGET_ATTR, budget)
    storage.set_study_user_attr(sid, rec.KIND_ATTR, rec.GROW)  # last: the phase is ready


def _fill_unready(storage: optuna.storages.BaseStorage, exp: Experiment, name: str, sid: int) -> None:
    kind, index = rec.parse_companion(exp.main.name, name) or ("", -1)
    if kind == rec.VALIDATION:
        _fill_round(storage, exp.main.name, name, sid, index, pending_candidates(exp))
    elif kind == rec.GROW and (plan := growth_plan(exp)) is not None:
        _fill_grow(storage, exp, name, sid, index, *plan)


def job_distribution(value: float) -> FloatDistribution:
    """A distribution that holds ``value``, to record a job's fixed params as ordinary trial params."""
    return FloatDistribution(min(0.0, value), max(2.0, value))
