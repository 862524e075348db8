"""Faults behind ``skiptune proxy``: workers that die, freeze or lose the proxy keep every guarantee.

Real processes: a proxy subprocess in front of a SQLite file, `skiptune worker` subprocesses that
reach it by ``grpc://`` only (no heartbeat table through the proxy: their beat is a counter in a
trial attribute), one SIGKILLed and one SIGSTOPped inside a trial, the proxy itself stopped and
restarted on the same port mid-run. The database is read directly to catch the victims and to
check the end: 0 lost, 0 duplicates, every budget met exactly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from test_faults import ThrowawayPostgres, _catch, _check_fleet, _finished, _state_of, _wait_for
from test_faults import throwaway_postgres as throwaway_postgres  # the fixture
from test_grpc_proxy import Proxy, _free_port, _proxy_command

from skiptune.cli import main as cli
from skiptune.search import records as rec
from skiptune.search.worker.stale import StaleSweep
from skiptune.storage import open_storage

if TYPE_CHECKING:
    from storage_fixtures import SearchAssets

pytest.importorskip("grpc", reason="grpcio is not installed (extra `grpc`): the proxy cannot run")

pytest_plugins = ["storage_fixtures"]
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
RIDE_OUT = ("--db-timeout", "120")


def _start_proxy(db_url: str, port: int, log: Path) -> Proxy:
    with log.open("ab") as out:
        process = subprocess.Popen(_proxy_command(db_url, port), stdout=out, stderr=subprocess.STDOUT)
    proxy = Proxy(process, port, log)
    proxy.wait_accepting()
    return proxy


def test_beat_counter_through_the_proxy_marks_a_silent_trial_stale(tmp_path: Path) -> None:
    """The liveness record itself: beats move the counter; a trial whose counter stands still for
    the grace period (on the sweeper's own clock) is failed and re-run once."""
    db_url = f"sqlite:///{tmp_path / 'b.db'}"
    port = _free_port()
    proxy = _start_proxy(db_url, port, tmp_path / "proxy.log")
    try:
        storage = open_storage(proxy.url, heartbeat_interval=1, grace_period=1)
        study = optuna.create_study(study_name="beats", storage=storage)
        study.enqueue_trial({"x": 0.5})
        alive, dead = study.ask(), study.ask()  # alive: the enqueued one (params fixed)
        dead.suggest_float("x", 0.0, 1.0)
        for t in (alive, dead):
            storage.record_heartbeat(t._trial_id)  # type: ignore[attr-defined]
        first = storage.get_trial(alive._trial_id).system_attrs[rec.BEAT_ATTR]
        sweep = StaleSweep(grace=0.6)
        assert sweep.sweep(study) == 0
        for _ in range(4):  # `alive` beats every 0.3 s, `dead` never again
            time.sleep(0.3)
            storage.record_heartbeat(alive._trial_id)  # type: ignore[attr-defined]
            sweep.sweep(study)
        assert storage.get_trial(alive._trial_id).system_attrs[rec.BEAT_ATTR] != first
        trials = storage.get_all_trials(study._study_id)
        assert [t.state for t in trials[:2]] == [TrialState.RUNNING, TrialState.FAIL]
        (copy,) = [t for t in trials if t.user_attrs.get(rec.RERUN_OF_ATTR) == dead.number]
        assert copy.state == TrialState.WAITING and rec.fixed_params(copy) == {"x": dead.params["x"]}
        assert proxy.terminate() == 0
    finally:
        if proxy.process.poll() is None:
            proxy.process.kill()


@pytest.mark.slow
def test_fleet_behind_the_proxy_rides_out_kill_freeze_and_proxy_restart(
    search_assets: SearchAssets, tmp_path: Path
) -> None:
    db_url, budget = f"sqlite:///{tmp_path / 'fleet.db'}", 4
    args = search_assets.study_args(nfes="2,3", trials=budget, storage=db_url, n_samples=32, rungs="16,32")
    stages = ["--growth-trials", "0", "--refine-trials", "0", "--no-window"]  # as test_faults' fleet
    assert cli([*args, "--validate-samples", "32", "--validate-blocks", "4", *stages]) == 0
    port, plog = _free_port(), tmp_path / "proxy.log"
    proxy = _start_proxy(db_url, port, plog)
    logs = [tmp_path / f"w{i}.log" for i in range(5)]
    killed_w = search_assets.worker(proxy.url, logs[0], batch_size=1, extra=RIDE_OUT)
    frozen_w = search_assets.worker(proxy.url, logs[1], batch_size=1, extra=RIDE_OUT)
    others: list[subprocess.Popen[bytes]] = []
    try:
        killed, frozen = _catch([killed_w, frozen_w], db_url)
        os.kill(killed_w.pid, signal.SIGKILL)
        killed_w.wait()
        others = [search_assets.worker(proxy.url, log, batch_size=4, extra=RIDE_OUT) for log in logs[2:]]
        _wait_for(lambda: _finished(db_url) >= 2, "the others to finish 2 trials")
        assert proxy.terminate() == 0  # the proxy goes away for 4 s and comes back on the same port
        time.sleep(4)
        proxy = _start_proxy(db_url, port, plog)
        _wait_for(lambda: _state_of(db_url, frozen) != TrialState.RUNNING, "the frozen trial to be swept")
        assert _state_of(db_url, frozen) == TrialState.FAIL
        os.kill(frozen_w.pid, signal.SIGCONT)
        codes = [w.wait(timeout=300) for w in [frozen_w, *others]]
    finally:
        for w in [killed_w, frozen_w, *others]:
            if w.poll() is None:
                os.kill(w.pid, signal.SIGCONT)
                w.kill()
        if proxy.process.poll() is None:
            proxy.process.kill()
    texts = [log.read_text() for log in logs]
    assert codes == [0] * 4, [t[-2000:] for t, c in zip(texts[1:], codes, strict=True) if c]
    assert not any("Traceback" in t for t in [*texts, plog.read_text()]), "\n".join(texts)[-4000:]
    assert any("database unreachable" in t for t in texts[2:])  # the proxy's restart was ridden out
    assert "dropping it" in texts[1]  # the frozen worker woke to find its trial re-run elsewhere
    _check_fleet(db_url, budget, [killed, frozen])
    _check_reruns_through_proxy(db_url, [killed, frozen])


def _check_reruns_through_proxy(db_url: str, victims: list[FrozenTrial]) -> None:
    """The victims' trials were failed by a sweep (no fail kind) and their copies beat by counter."""
    storage = optuna.storages.RDBStorage(db_url)
    for victim in victims:
        trial = storage.get_trial(victim._trial_id)
        assert trial.state == TrialState.FAIL and rec.FAIL_ATTR not in trial.user_attrs
        assert rec.BEAT_ATTR in trial.system_attrs  # it beat through the proxy before it stopped


def test_worker_started_before_the_proxy_waits_for_it(search_assets: SearchAssets, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'late.db'}"
    assert cli([*search_assets.study_args(nfes="2,3", trials=1, storage=db_url), "--no-validate"]) == 0
    port = _free_port()
    log = tmp_path / "w.log"
    worker = search_assets.worker(f"grpc://127.0.0.1:{port}", log, extra=("--db-timeout", "60"))
    try:
        _wait_for(lambda: "unreachable" in log.read_text(), "the worker to report the proxy unreachable", 60)
        assert worker.poll() is None, log.read_text()
        proxy = _start_proxy(db_url, port, tmp_path / "proxy.log")
        assert worker.wait(timeout=120) == 0, log.read_text()[-3000:]
        assert proxy.terminate() == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    assert "Traceback" not in log.read_text()


@pytest.mark.slow
def test_fleet_behind_the_proxy_rides_out_a_database_outage(
    search_assets: SearchAssets, throwaway_postgres: ThrowawayPostgres, tmp_path: Path
) -> None:
    """The database behind the proxy goes away for 5 s (20 s in scripts/host_proxy.sh): the proxy stays
    up and answers UNAVAILABLE, the workers wait, and the work finishes exactly once."""
    pg, db_url, budget = throwaway_postgres, throwaway_postgres.url, 3
    args = search_assets.study_args(nfes="2,3", trials=budget, storage=db_url, n_samples=32, rungs="16,32")
    stages = ["--growth-trials", "0", "--refine-trials", "0", "--no-window"]  # as test_faults' fleet
    assert cli([*args, "--validate-samples", "32", "--validate-blocks", "4", *stages]) == 0
    plog = tmp_path / "proxy.log"
    proxy = _start_proxy(db_url, _free_port(), plog)
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    workers = [search_assets.worker(proxy.url, log, batch_size=2, extra=RIDE_OUT) for log in logs]
    try:
        _wait_for(lambda: _finished(db_url) >= 1, "a first finished trial")
        pg.stop()
        time.sleep(5)  # 1 s heartbeats: both workers meet the outage
        pg.start()
        codes = [w.wait(timeout=300) for w in workers]
        assert proxy.process.poll() is None  # the proxy rode it out too
        assert proxy.terminate() == 0
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        if proxy.process.poll() is None:
            proxy.process.kill()
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], [t[-2000:] for t in texts]
    assert not any("Traceback" in t for t in [*texts, plog.read_text()]), "\n".join(texts)[-4000:]
    assert any("database unreachable (the proxy's database" in t for t in texts), texts
    _check_fleet(db_url, budget, [])
