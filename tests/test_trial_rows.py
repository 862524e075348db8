"""``storage/trial_rows.py`` decodes Optuna's tables as Optuna does: every kind of value, checked against
``RDBStorage.get_all_trials`` on SQLite and PostgreSQL."""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState, create_trial

from skiptune.storage import open_storage
from skiptune.storage.trial_rows import read_changed

pytest_plugins = ["storage_fixtures"]  # storage_url (sqlite + postgresql)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _key(t: FrozenTrial) -> tuple[Any, ...]:
    steps = {k: "nan" if math.isnan(v) else v for k, v in t.intermediate_values.items()}  # nan != nan
    return (
        t._trial_id, t.number, t.state, t.values, t.datetime_start, t.datetime_complete, t.params,
        list(t.params), t.distributions, t.user_attrs, t.system_attrs, steps,
    )  # fmt: skip


def test_rows_decode_as_optuna_reads_them(storage_url: str) -> None:
    storage = open_storage(storage_url)
    assert isinstance(storage, optuna.storages.RDBStorage)
    two = storage.create_new_study([StudyDirection.MINIMIZE, StudyDirection.MAXIMIZE], "two")
    one = storage.create_new_study([StudyDirection.MINIMIZE], "one")
    dists = {
        "b": FloatDistribution(1e-3, 1.0, log=True), "a": IntDistribution(1, 9, step=2),
        "c": CategoricalDistribution(["x", None, 3]),
    }  # fmt: skip
    inf = float("inf")
    trials = [
        create_trial(
            state=TrialState.COMPLETE, values=[inf, -inf], params={"b": 0.01, "a": 5, "c": None},
            distributions=dists, user_attrs={"u": [1, {"k": "v"}]}, system_attrs={"s": "t"},
            intermediate_values={1: float("nan"), 2: inf, 3: -inf, 4: 0.5},
        ),
        create_trial(
            state=TrialState.COMPLETE, values=[1.5, 2.5], params={"c": 3}, distributions={"c": dists["c"]}
        ),
        create_trial(state=TrialState.WAITING, system_attrs={"fixed_params": {"a": 3}}),
    ]
    for t in trials:
        storage.create_new_trial(two, template_trial=t)
    storage.create_new_trial(one)  # RUNNING, no values
    read = read_changed(storage, {two: (set(), -1), one: (set(), -1)})
    for sid in (two, one):
        mine = [t for s, t in read if s == sid]
        assert [_key(t) for t in mine] == [_key(t) for t in storage.get_all_trials(sid)]
    assert [s for s, _ in read] == [two, two, two, one]
