"""Studies: identity and names, idempotent creation, baseline and warm starts, budget claims, pruning."""

from __future__ import annotations

import random
from dataclasses import replace

import optuna
import pytest
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from skiptune.errors import SkiptuneError
from skiptune.objectives.spec import ObjectiveSpec
from skiptune.search.budget import (
    EVALUATION_FAILED,
    FAIL_ATTR,
    OVER_BUDGET,
    RELEASED,
    fresh_trials,
    within_budget,
)
from skiptune.search.pruning import RungPruner
from skiptune.search.space import SearchSpace
from skiptune.search.study import ROLE_ATTR, StudySpec, create_studies, find_studies
from skiptune.storage import open_storage

pytest_plugins = ["storage_fixtures"]  # storage_url, postgres_url, search_assets fixtures
optuna.logging.set_verbosity(optuna.logging.WARNING)
DISTS: dict[str, BaseDistribution] = {
    "rho_bottom": FloatDistribution(0.5, 1.2),
    "rho_top": FloatDistribution(0.5, 1.2),
}


def make_spec(nfe: int = 9, **changes: object) -> StudySpec:
    spec = StudySpec(
        model="tiny",
        model_fingerprint="f" * 64,
        sampler="heun",
        nfe=nfe,
        objective=ObjectiveSpec(
            extractor="tiny",
            feature_dim=6,
            reference="/r.npz",
            reference_sha256="a" * 64,
            n_samples=16,
            rungs=(8, 16),
        ),
        n_trials=6,
    )
    return replace(spec, **changes)  # type: ignore[arg-type]


def complete(study: optuna.Study, rho_bottom: float, rho_top: float, value: float) -> None:
    study.add_trial(
        create_trial(params={"rho_bottom": rho_bottom, "rho_top": rho_top}, distributions=DISTS, value=value)
    )


def test_names_follow_identity_not_budget() -> None:
    spec = make_spec()
    assert spec.name.startswith("tiny/heun/nfe=9/") and len(spec.name.rsplit("/", 1)[1]) == 6
    assert replace(spec, n_trials=99, search="gp").name == spec.name
    other_ref = replace(spec, objective=replace(spec.objective, reference_sha256="b" * 64))
    assert other_ref.name != spec.name and other_ref.name.startswith("tiny/heun/nfe=9/")
    assert replace(spec, space=SearchSpace(rho_bottom=(0.6, 1.0))).name != spec.name
    assert replace(spec, model_fingerprint="e" * 64).name != spec.name


def test_bad_spec_values_are_clear_errors() -> None:
    with pytest.raises(SkiptuneError, match="budget"):
        make_spec(n_trials=0)
    with pytest.raises(SkiptuneError, match="search algorithm"):
        make_spec(search="annealing")
    with pytest.raises(SkiptuneError, match="rho_top range"):
        SearchSpace(rho_top=(1.2, 0.5))


def test_create_is_idempotent_and_enqueues_the_baseline_once(storage_url: str) -> None:
    storage = open_storage(storage_url)
    first = create_studies(storage, [make_spec(5), make_spec(9)])
    again = create_studies(storage, [make_spec(5), make_spec(9, n_trials=8)])
    assert [c.created for c in first] == [True, True] and [c.created for c in again] == [False, False]
    assert [c.enqueued for c in first] == [[{"rho_bottom": 1.0, "rho_top": 1.0}]] * 2
    assert [c.enqueued for c in again] == [[], []]
    found = find_studies(storage, model="tiny")
    assert [s.name for s in found] == [make_spec(5).name, make_spec(9).name]
    assert [s.spec.n_trials for s in found] == [6, 8]  # the budget took the new value
    for s in found:
        trials = storage.get_all_trials(s.study_id)
        assert [(t.state, t.user_attrs.get(ROLE_ATTR)) for t in trials] == [(TrialState.WAITING, "baseline")]
    # Another objective for the same model and NFE is another study, next to the first.
    other_samples = replace(make_spec().objective, n_samples=32, rungs=(8, 32))
    create_studies(storage, [make_spec(9, objective=other_samples)])
    assert len(find_studies(storage, model="tiny", nfes=[9])) == 2
    assert find_studies(storage, model="other") == []


def test_the_seed_is_recorded_kept_and_changed_like_the_budget(storage_url: str) -> None:
    storage = open_storage(storage_url)
    (first,) = create_studies(storage, [make_spec(5, seed=7)])
    (kept,) = create_studies(storage, [make_spec(5)])  # no seed given: the recorded one stays
    (drawn,) = create_studies(storage, [make_spec(9)])  # a new study without a seed draws one
    (drawn_again,) = create_studies(storage, [make_spec(9)])
    (changed,) = create_studies(storage, [make_spec(5, seed=8)])
    assert (first.seed, kept.seed, changed.seed) == (7, 7, 8)
    assert drawn.seed is not None and drawn_again.seed == drawn.seed
    assert [s.spec.seed for s in find_studies(storage, model="tiny")] == [8, drawn.seed]
    assert make_spec(5, seed=1).name == make_spec(5).name  # not part of the identity
    with pytest.raises(SkiptuneError, match="bad seed -1"):
        make_spec(seed=-1)


def test_warm_start_from_nearest_nfes_of_the_same_objective(storage_url: str) -> None:
    storage = open_storage(storage_url)
    create_studies(storage, [make_spec(3), make_spec(5), make_spec(19)])
    other_objective = make_spec(7, objective=replace(make_spec().objective, reference_sha256="c" * 64))
    create_studies(storage, [other_objective])
    best = {3: (0.61, 0.91), 5: (0.72, 0.93), 19: (0.83, 0.97), 7: (0.55, 0.55)}
    for spec in (make_spec(3), make_spec(5), make_spec(19), other_objective):
        study = optuna.load_study(study_name=spec.name, storage=storage)
        complete(study, *best[spec.nfe], value=1.0)
        complete(study, 1.1, 1.1, value=2.0)
    (created,) = create_studies(storage, [make_spec(9)])
    # Baseline, then the best of NFE 5 (nearest below) and of NFE 19 (nearest above); not NFE 3,
    # not NFE 7 of another objective.
    assert created.enqueued == [
        {"rho_bottom": 1.0, "rho_top": 1.0},
        {"rho_bottom": 0.72, "rho_top": 0.93},
        {"rho_bottom": 0.83, "rho_top": 0.97},
    ]
    (again,) = create_studies(storage, [make_spec(9)])
    assert again.enqueued == []  # skip_if_exists
    trials = storage.get_all_trials(find_studies(storage, nfes=[9])[0].study_id)
    assert [t.user_attrs[ROLE_ATTR] for t in trials] == ["baseline", "warm_start", "warm_start"]


def test_warm_starts_never_exceed_the_budget(storage_url: str) -> None:
    storage = open_storage(storage_url)
    create_studies(storage, [make_spec(5), make_spec(19)])
    for nfe in (5, 19):
        study = optuna.load_study(study_name=make_spec(nfe).name, storage=storage)
        complete(study, 0.7, 0.9 + nfe / 100, 1.0)
    (created,) = create_studies(storage, [make_spec(9, n_trials=2)])
    assert len(created.enqueued) == 2  # baseline + one warm start fill the budget of 2


def _trial_with(state: TrialState, fail_kind: str | None = None) -> optuna.trial.FrozenTrial:
    attrs = {FAIL_ATTR: {"kind": fail_kind, "reason": "x"}} if fail_kind else {}
    value = 1.0 if state == TrialState.COMPLETE else None
    return create_trial(state=state, user_attrs=attrs, params={}, distributions={}, value=value)


def test_budget_counts_the_right_trials(storage_url: str) -> None:
    storage = open_storage(storage_url)
    study = optuna.create_study(study_name="b", storage=storage)
    rng = random.Random(7)
    kinds = [
        (TrialState.COMPLETE, None, True),
        (TrialState.PRUNED, None, True),
        (TrialState.WAITING, None, True),
        (TrialState.FAIL, EVALUATION_FAILED, True),
        (TrialState.FAIL, None, False),  # heartbeat-stale
        (TrialState.FAIL, OVER_BUDGET, False),
        (TrialState.FAIL, RELEASED, False),
    ]
    chosen = [rng.choice(kinds) for _ in range(12)]
    for state, kind, _ in chosen:
        study.add_trial(_trial_with(state, kind))
    running = storage.get_trial(storage.create_new_trial(study._study_id))  # number 12 (ask pops WAITING)
    assert running.number == 12
    counted = sum(c for _, _, c in chosen)
    assert 0 < counted < 12
    assert within_budget(fresh_trials(storage, study._study_id), running.number, counted + 1)
    assert not within_budget(fresh_trials(storage, study._study_id), running.number, counted)
    # Only trials ahead (smaller numbers) matter: the first trial always fits a budget of 1.
    assert within_budget(fresh_trials(storage, study._study_id), 0, 1)


def test_rung_pruner_compares_values_at_the_same_rung_only() -> None:
    study = optuna.create_study(pruner=RungPruner([8, 16], reduction_factor=2, min_peers=3))
    rng = random.Random(3)
    # Peers at rung 8 with values 10..13; at rung 16 (not a pruning rung) far smaller values.
    for v in (10.0, 11.0, 12.0, 13.0):
        study.add_trial(
            create_trial(
                params={},
                distributions={},
                value=v / 10,
                intermediate_values={8: v + rng.random() / 10, 16: v / 10},
            )
        )
    good, bad, early = study.ask(), study.ask(), study.ask()
    good.report(10.5, step=8)  # best half of {10, 11, 12, 13, 10.5}
    bad.report(12.5, step=8)
    early.report(100.0, step=4)  # not a rung: never pruned
    assert not good.should_prune() and bad.should_prune() and not early.should_prune()
    bad_last = study.ask()
    bad_last.report(99.0, step=16)  # the last rung is the result, never pruned
    assert not bad_last.should_prune()


def test_rung_pruner_waits_for_enough_peers() -> None:
    study = optuna.create_study(pruner=RungPruner([8, 16], reduction_factor=2, min_peers=3))
    study.add_trial(create_trial(params={}, distributions={}, value=1.0, intermediate_values={8: 1.0}))
    trial = study.ask()
    trial.report(50.0, step=8)
    assert not trial.should_prune()
