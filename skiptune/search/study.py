"""Studies: identity, naming, idempotent creation, the baseline and warm starts.

One Optuna study per (model, sampler, NFE, objective, search space). Its name is readable and
unique: ``"{model}/{sampler}/nfe={nfe}/{hash6}"`` where ``hash6`` is the first 6 hex digits of the
sha256 of the canonical identity JSON. The hash is *always* there, so a name never depends on the
order in which studies were created, and two objectives (other reference, other sample count) for
the same model and NFE never share a study. The full identity is stored in the study's user
attributes; a worker whose own identity differs refuses to write into the study.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
from optuna.trial import TrialState

from skiptune.errors import SkiptuneError
from skiptune.objectives.spec import ObjectiveSpec
from skiptune.search.algorithms import SEARCH_ALGORITHMS
from skiptune.search.budget import fresh_trials, used_budget
from skiptune.search.records import (
    BASELINE,
    BUDGET_ATTR,
    IDENTITY_ATTR,
    OBJECTIVE_ARGS_ATTR,
    ROLE_ATTR,
    SAMPLER_SIGMAS_ATTR,
    SEARCH_ATTR,
    SEED_ATTR,
    VALIDATION_ATTR,
    WARM_FROM_ATTR,
    WARM_START,
    study_id,
)
from skiptune.search.settings import ValidationSettings
from skiptune.search.space import BASELINE_PARAMS, SearchSpace

MAX_SEED = 2**31 - 1


def canonical(obj: Any) -> Any:
    """``obj`` as stored in a study (JSON round trip: tuples become lists, keys sorted), for comparisons."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


@dataclass(frozen=True)
class StudySpec:
    """Everything that defines a study. ``identity()`` is what changes the numbers or the space;
    ``n_trials`` (the budget shared by all workers), ``search`` and ``seed`` may change between runs."""

    model: str
    model_fingerprint: str
    sampler: str
    nfe: int
    objective: ObjectiveSpec  # extractor, reference (path and sha256), samples, rungs, seed base
    sampler_settings: dict[str, Any] = field(default_factory=dict)
    space: SearchSpace = field(default_factory=SearchSpace)
    n_trials: int = 30
    search: str = "tpe"
    validation: ValidationSettings | None = None  # None: the answer stays unvalidated (old studies)
    seed: int | None = None  # the search's seed: workers seed their samplers from it (None: not recorded)
    # the noise levels the sampler evaluates the net at (``sampling.levels``; the window stage's
    # candidates); None for studies created before it was stored: no window stage
    sampler_sigmas: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise SkiptuneError(f"bad seed {self.seed}: expected an integer in 0..{MAX_SEED}, e.g. 0")
        if self.n_trials < 1:
            raise SkiptuneError(f"bad trial budget {self.n_trials}: expected a positive integer, e.g. 30")
        if self.nfe < 1:
            raise SkiptuneError(f"bad NFE {self.nfe}: expected a positive integer")
        SEARCH_ALGORITHMS.get(self.search)  # validates the name with a clear error

    def identity(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "model_fingerprint": self.model_fingerprint,
            "sampler": self.sampler,
            "sampler_settings": self.sampler_settings,
            "nfe": self.nfe,
            "objective": self.objective_identity(),
            "space": self.space.to_dict(),
        }

    def objective_identity(self) -> dict[str, str]:
        """The objective's identity for this sampler and NFE (what ``FDObjective.identity()`` returns)."""
        return self.objective.identity(sampler=self.sampler, nfe=self.nfe, settings=self.sampler_settings)

    def canonical_identity(self) -> dict[str, Any]:
        """The identity as stored (JSON round trip: tuples become lists), for comparisons."""
        return canonical(self.identity())

    @property
    def identity_hash(self) -> str:
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:6]

    @property
    def name(self) -> str:
        return f"{self.model}/{self.sampler}/nfe={self.nfe}/{self.identity_hash}"

    def user_attrs(self) -> dict[str, Any]:
        attrs = {
            IDENTITY_ATTR: self.canonical_identity(),
            OBJECTIVE_ARGS_ATTR: self.objective.to_args(),
            BUDGET_ATTR: self.n_trials,
            SEARCH_ATTR: self.search,
        }
        if self.validation is not None:
            attrs[VALIDATION_ATTR] = self.validation.to_dict()
        if self.seed is not None:
            attrs[SEED_ATTR] = self.seed
        if self.sampler_sigmas is not None:
            attrs[SAMPLER_SIGMAS_ATTR] = list(self.sampler_sigmas)
        return attrs

    @classmethod
    def from_user_attrs(cls, attrs: dict[str, Any]) -> StudySpec | None:
        """The spec stored in a study, or None for a study skiptune did not create (or is still creating)."""
        ident, args = attrs.get(IDENTITY_ATTR), attrs.get(OBJECTIVE_ARGS_ATTR)
        if not isinstance(ident, dict) or not isinstance(args, dict):
            return None
        return cls(
            model=ident["model"],
            model_fingerprint=ident["model_fingerprint"],
            sampler=ident["sampler"],
            sampler_settings=ident["sampler_settings"],
            nfe=int(ident["nfe"]),
            objective=ObjectiveSpec.from_args(args, feature_dim=int(ident["objective"]["feature_dim"])),
            space=SearchSpace.from_dict(ident["space"]),
            n_trials=int(attrs.get(BUDGET_ATTR, 1)),
            search=str(attrs.get(SEARCH_ATTR, "tpe")),
            validation=(
                ValidationSettings.from_dict(attrs[VALIDATION_ATTR])
                if isinstance(attrs.get(VALIDATION_ATTR), dict)
                else None
            ),
            seed=int(attrs[SEED_ATTR]) if isinstance(attrs.get(SEED_ATTR), int) else None,
            sampler_sigmas=(
                tuple(float(v) for v in attrs[SAMPLER_SIGMAS_ATTR])
                if isinstance(attrs.get(SAMPLER_SIGMAS_ATTR), list)
                else None
            ),
        )


@dataclass(frozen=True)
class StoredStudy:
    """A skiptune study as found in storage."""

    name: str
    study_id: int
    spec: StudySpec


def find_studies(
    storage: optuna.storages.BaseStorage,
    *,
    model: str | None = None,
    sampler: str | None = None,
    nfes: Sequence[int] | None = None,
) -> list[StoredStudy]:
    """skiptune's studies in ``storage`` (others are ignored), filtered, ordered by model, sampler, NFE."""
    out = []
    for frozen in storage.get_all_studies():
        spec = StudySpec.from_user_attrs(frozen.user_attrs)
        if spec is None or spec.name != frozen.study_name:
            continue  # not ours, or still being created (attributes not written yet)
        if model is not None and spec.model != model:
            continue
        if sampler is not None and spec.sampler != sampler:
            continue
        if nfes is not None and spec.nfe not in nfes:
            continue
        out.append(StoredStudy(frozen.study_name, frozen._study_id, spec))
    return sorted(out, key=lambda s: (s.spec.model, s.spec.sampler, s.spec.nfe, s.name))


@dataclass(frozen=True)
class CreatedStudy:
    name: str
    created: bool  # False: it existed already (same identity)
    n_trials: int
    enqueued: list[dict[str, float]]
    seed: int | None = None


def create_studies(storage: optuna.storages.BaseStorage, specs: Sequence[StudySpec]) -> list[CreatedStudy]:
    """Create (or find, for the same identity) one study per spec; enqueue the baseline and warm starts.

    Idempotent: running it again changes nothing but the budget, search algorithm and seed, which take
    the new values, and enqueues warm starts from neighbouring NFEs that have finished since. A spec
    without a seed keeps the study's recorded one; a new study then records a random one.
    """
    out = []
    for spec in specs:
        created, seed = _create_or_update(storage, spec)
        study = optuna.load_study(study_name=spec.name, storage=storage)
        enqueued = _enqueue_baseline(study, storage, spec, created=created)
        enqueued += _enqueue_warm_starts(study, storage, spec)
        out.append(CreatedStudy(spec.name, created, spec.n_trials, enqueued, seed))
    return out


def _create_or_update(storage: optuna.storages.BaseStorage, spec: StudySpec) -> tuple[bool, int | None]:
    """(whether the study was created, its seed now)."""
    stored = None
    try:
        study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], spec.name)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study_id = storage.get_study_id_from_name(spec.name)
        stored = StudySpec.from_user_attrs(storage.get_study_user_attrs(study_id))
        if stored is not None and stored.canonical_identity() != spec.canonical_identity():
            raise SkiptuneError(
                f"study {spec.name!r} exists with another identity (hash collision or edited "
                "attributes); delete it with `optuna delete-study` or use another storage"
            ) from None
        created = False
    if spec.seed is None:  # keep the recorded seed; a new study (or an old one without) draws one
        kept = stored.seed if stored is not None else None
        spec = replace(spec, seed=kept if kept is not None else secrets.randbelow(MAX_SEED + 1))
    for key, value in spec.user_attrs().items():
        storage.set_study_user_attr(study_id, key, value)
    return created, spec.seed


def _enqueue_baseline(
    study: optuna.Study, storage: optuna.storages.BaseStorage, spec: StudySpec, *, created: bool
) -> list[dict[str, float]]:
    # Only the creating call enqueues without looking (exactly once even if two `study create` race);
    # a rerun enqueues only if the baseline never made it (creator died in between).
    trials = fresh_trials(storage, study_id(study))
    if not created and any(t.user_attrs.get(ROLE_ATTR) == BASELINE for t in trials):
        return []
    study.enqueue_trial(dict(BASELINE_PARAMS), user_attrs={ROLE_ATTR: BASELINE}, skip_if_exists=True)
    return [dict(BASELINE_PARAMS)]


def _enqueue_warm_starts(
    study: optuna.Study, storage: optuna.storages.BaseStorage, spec: StudySpec
) -> list[dict[str, float]]:
    """Enqueue the best pairs of the nearest lower and higher NFE of the same model/sampler/objective."""
    enqueued = []
    for neighbour in _neighbours(storage, spec):
        trials = fresh_trials(storage, study_id(study))
        if used_budget(trials) >= spec.n_trials:
            break
        best = _best_complete(storage, neighbour.study_id)
        if best is None:
            continue
        params = {k: float(v) for k, v in best.params.items()}
        n_before = len(trials)
        study.enqueue_trial(
            params,
            user_attrs={ROLE_ATTR: WARM_START, WARM_FROM_ATTR: neighbour.name},
            skip_if_exists=True,
        )
        if len(fresh_trials(storage, study_id(study))) > n_before:
            enqueued.append(params)
    return enqueued


def _family(spec: StudySpec) -> StudySpec:
    """The spec with what neighbouring studies may differ in set aside: NFE (and its noise levels),
    budget, search algorithm, validation settings, seed."""
    return replace(spec, nfe=1, n_trials=1, search="tpe", validation=None, sampler_sigmas=None, seed=None)


def _neighbours(storage: optuna.storages.BaseStorage, spec: StudySpec) -> list[StoredStudy]:
    family = _family(spec)
    same = [
        s
        for s in find_studies(storage, model=spec.model, sampler=spec.sampler)
        if s.spec.nfe != spec.nfe and _family(s.spec) == family
    ]
    lower = [s for s in same if s.spec.nfe < spec.nfe]
    higher = [s for s in same if s.spec.nfe > spec.nfe]
    picks = ([max(lower, key=lambda s: s.spec.nfe)] if lower else []) + (
        [min(higher, key=lambda s: s.spec.nfe)] if higher else []
    )
    return picks


def _best_complete(storage: optuna.storages.BaseStorage, study_id: int) -> optuna.trial.FrozenTrial | None:
    complete = [t for t in fresh_trials(storage, study_id) if t.state == TrialState.COMPLETE]
    return min(complete, key=lambda t: float(t.value), default=None)  # type: ignore[arg-type]
