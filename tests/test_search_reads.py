"""The worker loop's cheaper reads stay exact: cached finished trials, one read of many studies, ask
without a queue read, TPE over a known space, rate-limited stale sweeps."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from skiptune.search.algorithms import build_sampler
from skiptune.search.records import ask, claim_study_attr, fresh_trials, read_many
from skiptune.search.space import SearchSpace
from skiptune.search.worker.stale import StaleSweep
from skiptune.storage import open_storage

pytest_plugins = ["storage_fixtures"]  # storage_url: SQLite file or fresh PostgreSQL database
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def test_fresh_trials_sees_every_change_made_elsewhere(storage_url: str) -> None:
    mine = open_storage(storage_url)
    other = open_storage(storage_url)  # another worker: its own engine and cache
    study = optuna.create_study(study_name="s", storage=other)
    sid = study._study_id
    first = study.ask()
    study.tell(study.ask(), 2.0)
    seen = fresh_trials(mine, sid)
    assert [(t.number, t.state) for t in seen] == [(0, TrialState.RUNNING), (1, TrialState.COMPLETE)]
    # the unfinished trial finishes elsewhere, a new one is created, and an old one gets a param
    first.suggest_float("x", 0.0, 1.0)
    study.tell(first, 1.0)
    study.enqueue_trial({"x": 0.5})
    seen = fresh_trials(mine, sid)
    assert [(t.number, t.state, t.value) for t in seen] == [
        (0, TrialState.COMPLETE, 1.0),
        (1, TrialState.COMPLETE, 2.0),
        (2, TrialState.WAITING, None),
    ]
    assert "x" in seen[0].params
    assert [t.number for t in fresh_trials(open_storage(storage_url), sid)] == [0, 1, 2]  # a fresh process


def test_stale_sweep_runs_once_per_interval_per_study(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat_interval=60, grace_period=120)
    a = optuna.create_study(study_name="a", storage=storage)
    a.ask()  # RUNNING, never beats: stale once a sweep has seen it so for longer than the grace period
    lazy, eager = StaleSweep(grace=0.0, every=60), StaleSweep(grace=0.0)
    assert lazy.sweep(a) == 0 and eager.sweep(a) == 0  # first sight starts the clock
    time.sleep(0.05)
    assert lazy.sweep(a) == 0  # within its interval: skipped, no query
    assert a.trials[0].state == TrialState.RUNNING
    eager.sweep(a)
    assert a.trials[0].state == TrialState.FAIL


def _summary(trials: list[optuna.trial.FrozenTrial]) -> list[tuple[object, ...]]:
    return [(t.number, t.state, t.value, t.params, t.user_attrs, t.intermediate_values) for t in trials]


def test_read_many_equals_fresh_trials_of_each_study(storage_url: str) -> None:
    mine, other = open_storage(storage_url), open_storage(storage_url)  # two workers' engines
    studies = [optuna.create_study(study_name=f"s{i}", storage=other) for i in range(3)]
    sids = [s._study_id for s in studies]
    running = [s.ask() for s in studies]
    studies[0].tell(studies[0].ask(), 1.0)
    assert {sid: _summary(t) for sid, t in read_many(mine, sids).items()} == {
        sid: _summary(fresh_trials(other, sid)) for sid in sids
    }
    # elsewhere: one unfinished trial finishes, another reports, new trials appear in two studies
    running[0].suggest_float("x", 0.0, 1.0)
    studies[0].tell(running[0], 0.5)
    running[1].report(3.0, step=2)
    running[1].set_user_attr("k", "v")
    studies[2].enqueue_trial({"x": 0.25})
    studies[1].tell(studies[1].ask(), state=TrialState.PRUNED)
    many = read_many(mine, sids)
    assert {sid: _summary(t) for sid, t in many.items()} == {
        sid: _summary(fresh_trials(other, sid)) for sid in sids
    }
    assert [t.state for t in many[sids[0]]] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert many[sids[1]][0].intermediate_values == {2: 3.0} and many[sids[1]][0].user_attrs == {"k": "v"}
    assert read_many(mine, sids[1:2]) == {sids[1]: many[sids[1]]}  # a subset, nothing new: the same trials


def test_ask_takes_a_waiting_trial_only_when_told_one_is_there(storage_url: str) -> None:
    study = optuna.create_study(study_name="s", storage=open_storage(storage_url))
    study.enqueue_trial({"x": 0.25})
    new = ask(study, waiting=False)  # the caller's read showed none: a new trial, the queue untouched
    assert new.number == 1 and study.trials[0].state == TrialState.WAITING
    taken = ask(study, waiting=True)
    assert taken.number == 0 and taken.suggest_float("x", 0.0, 1.0) == 0.25
    assert ask(study, waiting=True).number == 2  # expected one, none left: a new trial
    assert [t.state for t in study.trials] == [TrialState.RUNNING] * 3


def test_known_space_tpe_proposes_what_optunas_inferred_space_does() -> None:
    space = SearchSpace(rho_bottom=(0.2, 1.2), rho_top=(0.5, 1.0))
    proposals = []
    for sampler in (
        build_sampler("tpe", space=space, n_trials=12, seed=3),
        optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=3, n_startup_trials=4),
    ):
        study = optuna.create_study(sampler=sampler)
        for _ in range(12):
            trial = study.ask()
            schedule = space.suggest(trial)
            study.tell(trial, (schedule.rho_bottom - 0.7) ** 2 + (schedule.rho_top - 0.8) ** 2)
        proposals.append([t.params for t in study.trials])
    assert proposals[0] == proposals[1]


def test_a_claimed_study_attr_has_one_writer_however_many_race(storage_url: str) -> None:
    import threading
    from types import SimpleNamespace

    from skiptune.errors import SkiptuneError
    from skiptune.search.worker.precision import check_precision

    sid = optuna.create_study(study_name="s", storage=open_storage(storage_url))._study_id
    storages = [open_storage(storage_url) for _ in range(6)]  # six workers, each its own engine
    start, got = threading.Barrier(len(storages)), {}

    def claim(i: int) -> None:
        start.wait()
        got[i] = claim_study_attr(storages[i], sid, "k", f"v{i}")

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(storages))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (winner,) = set(got.values())  # every racer sees the first writer's value
    assert open_storage(storage_url).get_study_system_attrs(sid)["k"] == winner
    # the precision pin of a study without trials is such a claim: the first worker's wins
    pid = optuna.create_study(study_name="p", storage=storages[0])._study_id
    study = SimpleNamespace(name="p", study_id=pid)
    check_precision(storages[0], study, "bf16")  # type: ignore[arg-type]
    check_precision(storages[1], study, "bf16")  # type: ignore[arg-type]
    with pytest.raises(SkiptuneError, match=r"run in bf16 \(claimed by the first worker"):
        check_precision(storages[2], study, "fp32")  # type: ignore[arg-type]
