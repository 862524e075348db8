"""The worker loop's cheaper reads stay exact: cached finished trials, rate-limited stale sweeps."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from skiptune.search.records import fresh_trials
from skiptune.search.stale import StaleSweep
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
