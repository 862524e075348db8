"""Trials from Optuna's tables as plain rows (SQLAlchemy Core), decoded as Optuna decodes them.

Optuna reads trials as ORM objects with one ``selectinload`` per trial table; building those objects
was most of the CPU of a read of a study's unfinished trials (5.6 ms for four, measured on the
development box), which the worker's loop and the proxy do at every turn. The same six statements
as rows cost a fraction of that. The decoding is Optuna's own (``RDBStorage.
_build_frozen_trial_from_trial_model``): parameters in insertion order through their distribution,
values and intermediate values through the models' ``stored_repr_to_*``, attributes from JSON;
``tests/test_proxy_reads.py`` and ``tests/test_search_reads.py`` compare the two.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.orm
from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.storages._rdb import models  # private: Optuna's schema
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial

TRIALS = models.TrialModel.__table__
_CHUNK = 500  # trial ids per IN list (as SQLAlchemy's selectinload)


def read_trials(session: sqlalchemy.orm.Session, where: Any) -> list[tuple[int, FrozenTrial]]:
    """``(study id, trial)`` of the trials (rows of ``TRIALS``) that match ``where``, by trial id."""
    t = TRIALS.c
    columns = (t.trial_id, t.number, t.study_id, t.state, t.datetime_start, t.datetime_complete)
    rows = session.execute(sqlalchemy.select(*columns).where(where).order_by(t.trial_id)).all()
    if not rows:
        return []
    parts = _Parts([int(r.trial_id) for r in rows])
    parts.load(session)
    return [(int(r.study_id), parts.build(r)) for r in rows]


class _Parts:
    """The params, values, attributes and intermediate values of some trials, by trial id."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        self.params: dict[int, dict[str, Any]] = {i: {} for i in ids}
        self.distributions: dict[int, dict[str, BaseDistribution]] = {i: {} for i in ids}
        self.values: dict[int, dict[int, float]] = {i: {} for i in ids}
        self.user: dict[int, dict[str, Any]] = {i: {} for i in ids}
        self.system: dict[int, dict[str, Any]] = {i: {} for i in ids}
        self.steps: dict[int, dict[int, float]] = {i: {} for i in ids}

    def load(self, session: sqlalchemy.orm.Session) -> None:
        params, values, user, system, steps = _PART_QUERIES
        for tid, name, internal, dist_json in self._rows(session, params):
            distribution = _distribution(dist_json)
            self.params[tid][name] = distribution.to_external_repr(internal)
            self.distributions[tid][name] = distribution
        decode = models.TrialValueModel.stored_repr_to_value
        for tid, objective, value, kind in self._rows(session, values):
            self.values[tid][objective] = decode(value, kind)
        for query, into in ((user, self.user), (system, self.system)):
            for tid, key, value_json in self._rows(session, query):
                into[tid][key] = json.loads(value_json)
        decode_step = models.TrialIntermediateValueModel.stored_repr_to_intermediate_value
        for tid, step, value, kind in self._rows(session, steps):
            self.steps[tid][step] = decode_step(value, kind)

    def _rows(self, session: sqlalchemy.orm.Session, query: Any) -> Iterator[Any]:
        for start in range(0, len(self.ids), _CHUNK):
            yield from session.execute(query, {"ids": self.ids[start : start + _CHUNK]}).all()

    def build(self, row: Any) -> FrozenTrial:
        tid = int(row.trial_id)
        values = self.values[tid]
        return FrozenTrial(
            number=row.number,
            state=row.state,
            value=None,
            values=[values[k] for k in sorted(values)] if values else None,
            datetime_start=row.datetime_start,
            datetime_complete=row.datetime_complete,
            params=self.params[tid],
            distributions=self.distributions[tid],
            user_attrs=self.user[tid],
            system_attrs=self.system[tid],
            intermediate_values=self.steps[tid],
            trial_id=tid,
        )


def _part_query(model: Any, columns: tuple[str, ...], order: str) -> Any:
    """The rows of one trial table for the trial ids bound as ``ids``, in insertion order: built once
    (building a statement with its list of ids cost more than running it)."""
    c = model.__table__.c
    ids: sqlalchemy.BindParameter[int] = sqlalchemy.bindparam("ids", type_=sqlalchemy.Integer, expanding=True)
    query = sqlalchemy.select(c.trial_id, *(c[n] for n in columns)).where(c.trial_id.in_(ids))
    return query.order_by(c[order])


_PART_QUERIES = (
    _part_query(models.TrialParamModel, ("param_name", "param_value", "distribution_json"), "param_id"),
    _part_query(models.TrialValueModel, ("objective", "value", "value_type"), "trial_value_id"),
    _part_query(models.TrialUserAttributeModel, ("key", "value_json"), "trial_user_attribute_id"),
    _part_query(models.TrialSystemAttributeModel, ("key", "value_json"), "trial_system_attribute_id"),
    _part_query(
        models.TrialIntermediateValueModel,
        ("step", "intermediate_value", "intermediate_value_type"),
        "trial_intermediate_value_id",
    ),
)


@functools.lru_cache(maxsize=1024)
def _distribution(dist_json: str) -> BaseDistribution:
    """A parameter's distribution (a study has a few, repeated in every trial's row: parsed once)."""
    return json_to_distribution(dist_json)


def read_changed(
    backend: optuna.storages.RDBStorage, wanted: dict[int, tuple[set[int], int]], *, check: bool = True
) -> list[tuple[int, FrozenTrial]]:
    """``(study id, trial)`` of the trials that ``wanted`` asks for: of study ``sid``, those with an id
    above ``last_finished`` or in ``unfinished`` (``wanted[sid] == (unfinished, last_finished)``), the
    rule of Optuna's caches. One query for all studies and one per trial table (six statements), read as
    rows (``read_trials``).
    ``check``: a study that does not exist raises ``KeyError`` (one statement more, only when a study
    read no trial). Read by the worker's cache (``read_many``) and by the proxy for its clients."""
    trial = TRIALS.c
    conditions = []
    for sid, (unfinished, last_finished) in wanted.items():
        newer = trial.trial_id > last_finished
        which = sqlalchemy.or_(newer, trial.trial_id.in_(unfinished)) if unfinished else newer
        conditions.append(sqlalchemy.and_(trial.study_id == sid, which))
    if not conditions:
        return []
    with _create_scoped_session(backend.scoped_session) as session:
        read = read_trials(session, sqlalchemy.or_(*conditions))
        if check:
            _check_studies(session, set(wanted) - {sid for sid, _ in read})
    return read


def _check_studies(session: sqlalchemy.orm.Session, sids: set[int]) -> None:
    """``KeyError`` (as Optuna's reads raise) unless every study in ``sids`` exists."""
    if not sids:
        return
    study = models.StudyModel
    found = {int(i) for (i,) in session.query(study.study_id).filter(study.study_id.in_(sids)).all()}
    missing = sorted(sids - found)
    if missing:
        raise KeyError(f"No study with study_id {missing[0]} exists.")
