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
    refinement on and not run yet? -- yes --> new refine phase (small box around the answer) --> searching
        | no
    window stage on, answer validated, windows left to screen? -- yes --> new window screen --> validating
        | no
    screened windows better than the pair on the search seeds, not validated? -- yes --> new round
        | no
    validated / no-gain (a validated window replaces the full-range answer only if it beats it too)
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
from skiptune.search.experiment.growth import grown_space, refine_space
from skiptune.search.experiment.refine_shape import aspect, length_scales
from skiptune.search.experiment.validation import VALIDATED, Decision, decide, prefer_window
from skiptune.search.experiment.window import Span, next_spans, span_of, window_params, window_space
from skiptune.search.settings import ValidationSettings
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
    kind: str = rec.GROW  # GROW (also the main study), REFINE or WINDOW

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
    windows: list[Phase] = field(default_factory=list)  # the window stage's screens

    @property
    def search_done(self) -> bool:
        return all(p.done for p in self.phases)

    @property
    def box(self) -> SearchSpace:
        """The latest search box (grown ones included; a refinement's small box is not one)."""
        return [p for p in self.phases if p.kind == rec.GROW][-1].space

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

    def window_jobs(self) -> set[tuple[float, ...]]:
        """Params of every job of the window stage."""
        return {
            param_key(rec.fixed_params(t))
            for r in self.rounds
            for t in r.trials
            if t.user_attrs.get(rec.ROLE_ATTR) == rec.WINDOW_CANDIDATE
        }

    def full_range_decision(self) -> Decision | None:
        """The decision among the search's candidates alone (growth, refinement and windows start there)."""
        if self.settings is None:
            return None
        results = self.holdout_results()
        base = results.pop(param_key(BASELINE_PARAMS), None)
        for key in self.window_jobs():
            results.pop(key, None)
        if base is None or not results:
            return None
        return decide(base[0], base[1], list(results.values()), threshold=self.settings.critical,
                      clip_guard=self.settings.clip_guard is not None)  # fmt: skip

    def decision(self) -> Decision | None:
        """The answer: the full-range decision, or a validated window of its pair that beats it too."""
        full = self.full_range_decision()
        if full is None or self.settings is None:
            return full
        results = self.holdout_results()
        windowed = [results[k] for k in self.window_jobs() if k in results]
        base = results[param_key(BASELINE_PARAMS)]
        answer = results.get(param_key(full.params), base)
        return prefer_window(full, answer[1], base[0], base[1], windowed, threshold=self.settings.critical,
                             clip_guard=self.settings.clip_guard is not None)  # fmt: skip

    def status(self) -> str:
        if self.settings is None:
            return UNVALIDATED
        if not self.search_done:
            return SEARCHING
        if pending_candidates(self) or not all(r.done for r in self.rounds) or self.unready:
            return VALIDATING
        if refine_due(self) or window_due(self):
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


# ------------------------------------------------------------------------------------------ the window stage


def window_pair(exp: Experiment) -> dict[str, float] | None:
    """The pair whose sigma windows the stage tries: the validated full-range answer (None: no stage)."""
    levels = exp.main.spec.sampler_sigmas
    if exp.settings is None or exp.settings.window_trials == 0 or not levels or len(levels) < 2:
        return None
    full = exp.full_range_decision()
    if full is None or full.status != VALIDATED or "sigma_a" in full.params:
        return None  # nothing validated to window (or the search already searched windows)
    return dict(full.params)


def screened(exp: Experiment, pair: dict[str, float]) -> dict[Span, float]:
    """Span -> search-seed value of every window of ``pair`` screened so far (inf: pruned or failed)."""
    levels = exp.main.spec.sampler_sigmas or ()
    out: dict[Span, float] = {}
    for phase in exp.windows:
        for t in phase.trials:
            params = rec.fixed_params(t)
            if t.state in _ACTIVE or any(k not in params for k in (*pair, "sigma_a", "sigma_b")):
                continue  # running, or refused before it took params (over budget)
            if param_key({k: params[k] for k in pair}) != param_key(pair):
                continue
            span = span_of(schedule_window(params), levels)
            if span is not None:
                value = float(t.value) if t.state == TrialState.COMPLETE and t.value is not None else math.inf
                out[span] = min(value, out.get(span, math.inf))
    return out


def schedule_window(params: Mapping[str, Any]) -> tuple[float, float]:
    a, b = float(params["sigma_a"]), float(params["sigma_b"])
    return min(a, b), max(a, b)


def spans_to_screen(exp: Experiment) -> list[Span]:
    """The next windows to screen (none while a screen runs, or when the search over spans is over)."""
    pair = window_pair(exp)
    if pair is None or not all(w.done for w in exp.windows) or exp.settings is None:
        return []
    levels = exp.main.spec.sampler_sigmas or ()
    return next_spans(len(levels), screened(exp, pair), exp.settings.window_trials)


def pending_windows(exp: Experiment) -> list[dict[str, float]]:
    """Screened windows to validate: the best ``window_candidates`` that beat the pair on the search
    seeds (same seeds: common random numbers), not validated yet; none until the screening is over."""
    pair = window_pair(exp)
    if pair is None or exp.settings is None or spans_to_screen(exp) or not all(w.done for w in exp.windows):
        return []
    values = screened(exp, pair)
    own = _search_value(exp, pair)
    better = sorted((v, s) for s, v in values.items() if math.isfinite(v) and (own is None or v < own))
    levels = exp.main.spec.sampler_sigmas or ()
    chosen = [window_params(pair, s, levels) for _, s in better[: exp.settings.window_candidates]]
    jobs = exp.jobs()
    return [p for p in chosen if param_key(p) not in jobs]


def window_due(exp: Experiment) -> bool:
    """Whether the window stage has work left (a screen running or to create, windows to validate)."""
    if window_pair(exp) is None:
        return False
    return not all(w.done for w in exp.windows) or bool(spans_to_screen(exp) or pending_windows(exp))


def _search_value(exp: Experiment, params: dict[str, float]) -> float | None:
    key = param_key(params)
    values = [
        float(t.value)
        for t in exp.search_trials()
        if t.state == TrialState.COMPLETE and t.value is not None and param_key(t.params) == key
    ]
    return min(values, default=None)


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
    windows: list[Phase] = []
    unready: list[tuple[str, int]] = []
    for frozen in storage.get_all_studies() if studies is None else studies:
        if not rec.is_companion(main.name, frozen.study_name):
            continue
        sid, cattrs = frozen._study_id, frozen.user_attrs
        kind = cattrs.get(rec.KIND_ATTR)
        if cattrs.get(rec.PARENT_ATTR) != main.name or kind not in rec.COMPANION_PREFIX:
            unready.append((frozen.study_name, sid))
        elif kind == rec.VALIDATION:
            rounds.append(Round(frozen.study_name, sid, int(cattrs[rec.PHASE_ATTR]), read(sid)))
        else:
            space = SearchSpace.from_dict(cattrs[rec.SPACE_ATTR])
            phase = Phase(frozen.study_name, sid, int(cattrs[rec.PHASE_ATTR]), space,
                          int(cattrs[rec.PHASE_BUDGET_ATTR]), read(sid), kind)  # fmt: skip
            (windows if kind == rec.WINDOW else phases).append(phase)
    phases.sort(key=lambda p: p.index)
    rounds.sort(key=lambda r: r.index)
    windows.sort(key=lambda w: w.index)
    return Experiment(main, settings, phases, rounds, unready, windows)


def companion_ids(main: StoredStudy, studies: list[FrozenStudy]) -> list[int]:
    """The ids of the studies in ``studies`` whose trials ``load_experiment`` reads for ``main``."""
    return [main.study_id, *(f._study_id for f in studies if rec.is_companion(main.name, f.study_name))]


# ------------------------------------------------------------------------------------------ transitions

_first_seen_unready: dict[str, float] = {}


def advance(storage: optuna.storages.BaseStorage, exp: Experiment, *, grace: float = 120.0) -> bool:
    """Take the experiment's next step if one is due; True if one was: this call created or completed
    something, or another worker created it just before (either way the experiment is to be read again)."""
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
        create_round(storage, exp, pending)
        return True
    if not all(r.done for r in exp.rounds):
        return False
    if _maybe_grow(storage, exp) or _maybe_refine(storage, exp):
        return True
    spans = spans_to_screen(exp)
    if spans:
        return _create_window_screen(storage, exp, spans)
    windows = pending_windows(exp)
    if windows:
        create_round(storage, exp, windows, window=True)
    return bool(windows)


def _create_companion(storage: optuna.storages.BaseStorage, name: str) -> int | None:
    try:
        return storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], name)
    except optuna.exceptions.DuplicatedStudyError:
        return None  # another worker made it first


def create_round(
    storage: optuna.storages.BaseStorage,
    exp: Experiment,
    jobs: list[dict[str, float]],
    *,
    window: bool = False,
) -> str | None:
    """Create the next validation round with ``jobs`` (``window``: the window stage's); its name, or None
    if another worker made it first."""
    unready = [rec.parse_companion(exp.main.name, n) for n, _ in exp.unready]
    index = len(exp.rounds) + sum(u is not None and u[0] == rec.VALIDATION for u in unready)
    name = rec.companion_name(exp.main.name, rec.VALIDATION, index)
    sid = _create_companion(storage, name)
    if sid is None:
        return None
    _fill_round(storage, exp.main.name, name, sid, index, jobs, window=window)
    _log.info("validation round %s: %d jobs", name, len(jobs))
    return name


def _fill_round(
    storage: optuna.storages.BaseStorage,
    main: str,
    name: str,
    sid: int,
    index: int,
    jobs: list[dict[str, float]],
    *,
    window: bool = False,
) -> None:
    study = optuna.load_study(study_name=name, storage=storage)
    have = {param_key(rec.fixed_params(t)) for t in rec.fresh_trials(storage, sid)}
    for params in jobs:
        if param_key(params) not in have:
            role = rec.BASELINE if param_key(params) == param_key(BASELINE_PARAMS) else rec.CANDIDATE
            study.enqueue_trial(params, user_attrs={rec.ROLE_ATTR: rec.WINDOW_CANDIDATE if window else role})
    storage.set_study_user_attr(sid, rec.PARENT_ATTR, main)
    storage.set_study_user_attr(sid, rec.PHASE_ATTR, index)
    storage.set_study_user_attr(sid, rec.KIND_ATTR, rec.VALIDATION)  # last: the round is ready


def growth_plan(exp: Experiment) -> tuple[SearchSpace, int] | None:
    """The grown box and its trial budget, if the validated best presses against a growable edge."""
    decision = exp.full_range_decision()
    if exp.settings is None or decision is None:
        return None
    left = exp.settings.growth_budget - sum(p.budget for p in exp.phases[1:] if p.kind == rec.GROW)
    space = grown_space(exp.box, decision.best.params, edge=exp.settings.edge)
    if space is None or left <= 0:
        return None
    return space, min(left, max(1, math.ceil(exp.settings.growth_budget / 2)))


def _maybe_grow(storage: optuna.storages.BaseStorage, exp: Experiment) -> bool:
    return _new_phase(storage, exp, rec.GROW, growth_plan(exp), "growing the box of")


def _refine_center(exp: Experiment) -> dict[str, float] | None:
    """Where a due refinement is centred: the full-range answer (the validated best, or (1, 1) for
    no-gain), if refinement is on, has not run (once per experiment), and no growth is due before it."""
    settings = exp.settings
    if settings is None or settings.refine_trials == 0 or any(p.kind == rec.REFINE for p in exp.phases):
        return None
    decision = exp.full_range_decision()
    if decision is None or growth_plan(exp) is not None:
        return None
    return decision.params


def refine_due(exp: Experiment) -> bool:
    return _refine_center(exp) is not None


def refine_plan(exp: Experiment) -> tuple[SearchSpace, int] | None:
    """The refinement's box (shaped by ``_refine_aspect``) and budget, if it is due."""
    center = _refine_center(exp)
    if center is None or exp.settings is None:
        return None
    space = refine_space(exp.box, center, radius=exp.settings.refine_radius, aspect=_refine_aspect(exp))
    return space, exp.settings.refine_trials


def _refine_aspect(exp: Experiment) -> float:
    """The refinement box's aspect (``refine_shape``): from the completed trials of every phase."""
    if exp.settings is None or exp.settings.refine_shape == "square":
        return 1.0
    done = [
        t for p in exp.phases for t in p.trials
        if t.state == TrialState.COMPLETE and t.value is not None
        and t.user_attrs.get(rec.ROLE_ATTR) != rec.PRIOR
    ]  # fmt: skip
    points = [(float(t.params["rho_bottom"]), float(t.params["rho_top"])) for t in done]
    widths = (exp.box.rho_bottom[1] - exp.box.rho_bottom[0], exp.box.rho_top[1] - exp.box.rho_top[0])
    return aspect(length_scales(points, [float(t.value or math.nan) for t in done], widths))


def _maybe_refine(storage: optuna.storages.BaseStorage, exp: Experiment) -> bool:
    return _new_phase(storage, exp, rec.REFINE, refine_plan(exp), "refining")


def _new_phase(
    storage: optuna.storages.BaseStorage,
    exp: Experiment,
    kind: str,
    plan: tuple[SearchSpace, int] | None,
    doing: str,
) -> bool:
    """Create and fill the next search phase (a growth or the refinement) of ``plan``, if due (True)."""
    if plan is None:
        return False
    space, budget = plan
    index = len(exp.phases)
    name = rec.companion_name(exp.main.name, kind, index)
    sid = _create_companion(storage, name)
    if sid is None:
        return True  # another worker made it first
    _fill_grow(storage, exp, name, sid, index, space, budget, kind=kind)
    _log.info("%s %s: %s (%d trials)", doing, exp.main.name, space.to_dict(), budget)
    return True


def _create_window_screen(storage: optuna.storages.BaseStorage, exp: Experiment, spans: list[Span]) -> bool:
    index = len(exp.windows)
    name = rec.companion_name(exp.main.name, rec.WINDOW, index)
    sid = _create_companion(storage, name)
    if sid is None:
        return True  # another worker made it first
    _fill_window_screen(storage, exp, name, sid, index, spans)
    _log.info("window screen %s: %d windows", name, len(spans))
    return True


def _fill_window_screen(
    storage: optuna.storages.BaseStorage, exp: Experiment, name: str, sid: int, index: int, spans: list[Span]
) -> None:
    """One enqueued search-seed trial per window of the pair (a grow phase's attributes, kind WINDOW)."""
    pair = window_pair(exp)
    levels = exp.main.spec.sampler_sigmas
    assert pair is not None and levels
    study = optuna.load_study(study_name=name, storage=storage)
    have = {param_key(rec.fixed_params(t)) for t in rec.fresh_trials(storage, sid)}
    for span in spans:
        params = window_params(pair, span, levels)
        if param_key(params) not in have:
            study.enqueue_trial(params, user_attrs={rec.ROLE_ATTR: rec.WINDOW_CANDIDATE})
    storage.set_study_user_attr(sid, rec.PARENT_ATTR, exp.main.name)
    storage.set_study_user_attr(sid, rec.PHASE_ATTR, index)
    storage.set_study_user_attr(sid, rec.SPACE_ATTR, window_space(pair, levels).to_dict())
    storage.set_study_user_attr(sid, rec.PHASE_BUDGET_ATTR, len(spans))
    storage.set_study_user_attr(sid, rec.KIND_ATTR, rec.WINDOW)  # last: the screen is ready


def _fill_grow(
    storage: optuna.storages.BaseStorage,
    exp: Experiment,
    name: str,
    sid: int,
    index: int,
    space: SearchSpace,
    budget: int,
    *,
    kind: str = rec.GROW,
) -> None:
    """Copy every finished trial of the earlier phases inside ``space`` in as priors (TPE learns from
    them), then the attrs."""
    study = optuna.load_study(study_name=name, storage=storage)
    dists = space.distributions()
    have = {t.user_attrs.get("skiptune_copied_from") for t in rec.fresh_trials(storage, sid)}
    for phase in exp.phases:
        for t in phase.trials:
            origin = f"{phase.name}#{t.number}"
            if t.state not in (TrialState.COMPLETE, TrialState.PRUNED) or origin in have:
                continue
            if set(t.params) != set(dists) or not all(
                d.low <= float(t.params[n]) <= d.high for n, d in dists.items()
            ):
                continue  # another space, or outside a refinement's small box
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
    storage.set_study_user_attr(sid, rec.KIND_ATTR, kind)  # last: the phase is ready


def _fill_unready(storage: optuna.storages.BaseStorage, exp: Experiment, name: str, sid: int) -> None:
    kind, index = rec.parse_companion(exp.main.name, name) or ("", -1)
    if kind == rec.VALIDATION:
        jobs = pending_candidates(exp)
        window = not jobs
        _fill_round(storage, exp.main.name, name, sid, index, jobs or pending_windows(exp), window=window)
    elif kind == rec.GROW and (plan := growth_plan(exp)) is not None:
        _fill_grow(storage, exp, name, sid, index, *plan)
    elif kind == rec.REFINE and (refine := refine_plan(exp)) is not None:
        _fill_grow(storage, exp, name, sid, index, *refine, kind=rec.REFINE)
    elif kind == rec.WINDOW and (spans := spans_to_screen(exp)):
        _fill_window_screen(storage, exp, name, sid, index, spans)


def job_distribution(value: float) -> FloatDistribution:
    """A distribution that holds ``value``, to record a job's fixed params as ordinary trial params."""
    return FloatDistribution(min(0.0, value), max(2.0, value))
