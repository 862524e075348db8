"""The proxy's trial reads (``storage/proxy_reads.py``): many studies in one call, ``GetTrials`` straight
from the database, and Optuna's own proxy (without the call) read study by study; all checked against
the database read directly, through a real ``skiptune proxy`` subprocess."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial
from test_grpc_proxy import running_proxy

from skiptune.search.records import read_many
from skiptune.storage import open_storage
from skiptune.storage.proxy_client import FleetProxy
from skiptune.storage.proxy_reads import pack, unpack

grpc = pytest.importorskip("grpc", reason="grpcio is not installed (extra `grpc`): the proxy cannot run")

pytest_plugins = ["storage_fixtures"]  # storage_url (sqlite + postgresql)

optuna.logging.set_verbosity(optuna.logging.WARNING)
X = FloatDistribution(-1.0, 1.0)


def test_pack_round_trip_and_refusal() -> None:
    messages = [b"", b"a", bytes(range(256)) * 3, b"z" * 20000]  # lengths of 1, 2 and 3 varint bytes
    assert unpack(pack(messages)) == messages
    assert unpack(b"") == []
    for bad in (b"\x12\x00", b"\x0a\x05abc", b"\x0a\x80"):  # wrong tag, cut short, unfinished varint
        with pytest.raises(ValueError):
            unpack(bad)


def _seen(trials: list[FrozenTrial]) -> list[tuple[Any, ...]]:
    return [
        (t.number, t.state, t.params, t.values, t.user_attrs, t.system_attrs, t.intermediate_values,
         t.distributions, t.datetime_start, t.datetime_complete, t._trial_id)
        for t in trials
    ]


def _fill(db: optuna.storages.BaseStorage) -> list[int]:
    """Three studies straight in the database: finished trials, a WAITING one, none at all."""
    sids = [db.create_new_study([optuna.study.StudyDirection.MINIMIZE], f"reads-{i}") for i in range(3)]
    for i in range(3):
        trial = create_trial(
            state=TrialState.COMPLETE, value=float(i), params={"x": i / 4}, distributions={"x": X}
        )
        trial.set_user_attr("i", i)
        db.create_new_trial(sids[0], template_trial=trial)
    waiting = create_trial(state=TrialState.WAITING, system_attrs={"fixed_params": {"x": 0.5}})
    db.create_new_trial(sids[1], template_trial=waiting)
    return sids


def test_many_studies_in_one_call_as_the_database_holds_them(storage_url: str, tmp_path: Path) -> None:
    db = open_storage(storage_url)
    sids = _fill(db)
    with running_proxy(storage_url, tmp_path / "proxy.log") as proxy:
        storage = open_storage(proxy.url)
        assert isinstance(storage, FleetProxy)
        first = read_many(storage, sids)
        assert storage._many_reads  # the skiptune proxy answered GetManyTrials
        assert {s: _seen(t) for s, t in first.items()} == {s: _seen(db.get_all_trials(s)) for s in sids}
        # A trial this proxy never created (enqueued in the database): taken and written through the proxy.
        (job,) = first[sids[1]]
        assert storage.set_trial_state_values(job._trial_id, TrialState.RUNNING)
        storage.set_trial_param(job._trial_id, "x", 0.5, X)
        storage.set_trial_intermediate_value(job._trial_id, 200, 0.25)
        db.create_new_trial(sids[2])  # written elsewhere meanwhile: seen at the next read
        storage.set_trial_state_values(job._trial_id, TrialState.COMPLETE, [0.125])
        second = read_many(storage, sids)
        assert {s: _seen(t) for s, t in second.items()} == {s: _seen(db.get_all_trials(s)) for s in sids}
        assert _seen(second[sids[1]])[0][1:4] == (TrialState.COMPLETE, {"x": 0.5}, [0.125])
        # Optuna's own reads (GetTrials, straight from the database) agree, in a fresh client too.
        for reader in (storage, open_storage(proxy.url)):
            for sid in sids:
                assert _seen(reader.get_all_trials(sid)) == _seen(db.get_all_trials(sid))
                waiting = reader.get_all_trials(sid, states=(TrialState.WAITING,))
                assert waiting == []
        with pytest.raises(KeyError):
            read_many(storage, [sids[0], max(sids) + 1000])
        with pytest.raises(KeyError):
            storage.get_all_trials(max(sids) + 1000)
        assert proxy.terminate() == 0
    assert "Traceback" not in proxy.log()


def test_a_fresh_proxy_takes_writes_to_a_trial_it_never_read(storage_url: str, tmp_path: Path) -> None:
    """A worker holding a trial when its proxy restarts writes the trial's next parameter through the new
    proxy process, which has not read that study yet (Optuna's cache raised KeyError: NOT_FOUND)."""
    db = open_storage(storage_url)
    sid = db.create_new_study([optuna.study.StudyDirection.MINIMIZE], "fresh-proxy")
    held = db.create_new_trial(sid)  # RUNNING, created before this proxy started
    with running_proxy(storage_url, tmp_path / "proxy.log") as proxy:
        storage = open_storage(proxy.url)
        storage.set_trial_param(held, "x", 0.25, X)  # the first call this proxy process serves
        storage.set_trial_param(held, "y", 0.5, X)
        assert db.get_trial(held).params == {"x": 0.25, "y": 0.5}
        with pytest.raises(KeyError):
            storage.set_trial_param(held + 1000, "x", 0.25, X)  # no such trial: NOT_FOUND as before
        assert proxy.terminate() == 0
    assert "Traceback" not in proxy.log()


@contextmanager
def _optuna_proxy(db_url: str) -> Iterator[int]:
    """Optuna's own proxy server (no GetManyTrials), in this process."""
    from optuna.storages._grpc.auto_generated import api_pb2_grpc
    from optuna.storages._grpc.servicer import OptunaStorageProxyService

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    service = OptunaStorageProxyService(optuna.storages.get_storage(db_url))
    api_pb2_grpc.add_StorageServiceServicer_to_server(service, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None)


def test_optunas_own_proxy_is_read_study_by_study(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'plain.db'}"
    db = open_storage(db_url)
    sids = _fill(db)
    with _optuna_proxy(db_url) as port:
        storage = open_storage(f"grpc://127.0.0.1:{port}")
        assert isinstance(storage, FleetProxy)
        for _ in range(2):  # the first call finds GetManyTrials missing, the second no longer asks
            trials = read_many(storage, sids)
            assert not storage._many_reads
            assert {s: _seen(t) for s, t in trials.items()} == {s: _seen(db.get_all_trials(s)) for s in sids}
        storage.close()
