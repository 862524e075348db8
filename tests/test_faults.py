"""Faults: a database restart, a killed worker, a frozen worker; trials that never beat; storage errors.

The fleet test starts its own throwaway PostgreSQL cluster (initdb/pg_ctl as the ``postgres`` user,
a free port, a data folder under /tmp), never the shared server, and restarts it mid-run under six
worker processes while one worker is SIGKILLed and another SIGSTOPped past the grace period.
The unit tests run on SQLite in-process: the stale sweep, the drop of a trial ended elsewhere, the
storage boundary's classification and timeout.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import pytest
import sqlalchemy.exc
from optuna.trial import FrozenTrial, TrialState
from storage_fixtures import plain_storage

from skiptune.cli import main as cli
from skiptune.errors import SkiptuneError
from skiptune.search import lineage
from skiptune.search import records as rec
from skiptune.search.budget import counts_against_budget, used_budget
from skiptune.search.experiment.state import load_experiment
from skiptune.search.experiment.validation import NO_GAIN, VALIDATED
from skiptune.search.study import find_studies
from skiptune.search.worker.loop import run_worker
from skiptune.search.worker.objective import build_objective
from skiptune.search.worker.resilience import StorageGuard, StorageUnavailable
from skiptune.search.worker.stale import StaleSweep
from skiptune.storage import normalize_url, open_storage
from skiptune.storage.failures import PERMANENT, TRANSIENT, classify

if TYPE_CHECKING:
    from storage_fixtures import SearchAssets

pytest_plugins = ["storage_fixtures"]
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _plain(url: str) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(normalize_url(url))


def _all_trials(url: str) -> dict[str, list[FrozenTrial]]:
    with plain_storage(url) as storage:
        return {s.study_name: storage.get_all_trials(s._study_id) for s in storage.get_all_studies()}


# ------------------------------------------------------------------------------ the stale sweep


def test_never_beaten_trial_is_failed_and_rerun_once(search_assets: SearchAssets, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert cli([*search_assets.study_args(nfes="2", trials=3, storage=url), "--no-validate"]) == 0
    storage = open_storage(url, heartbeat_interval=1, grace_period=1)
    (main,) = find_studies(storage)
    study = optuna.load_study(study_name=main.name, storage=storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "heartbeat is supposed to be used with optimize"
        baseline = study.ask()  # pops the enqueued baseline: RUNNING, params fixed, no heartbeat yet
        fresh = study.ask()  # a new trial: RUNNING, no params yet; its "worker" dies before any beat
    sweeps = [StaleSweep(grace=0.5), StaleSweep(grace=0.5)]  # two waiting workers
    assert [s.sweep(study) for s in sweeps] == [0, 0]  # first sight: not stale yet
    time.sleep(0.7)
    assert sum(s.sweep(study) for s in sweeps) == 2 and sum(s.sweep(study) for s in sweeps) == 0
    trials = storage.get_all_trials(main.study_id)
    assert [t.state for t in trials[:2]] == [TrialState.FAIL, TrialState.FAIL]
    assert not any(rec.FAIL_ATTR in t.user_attrs for t in trials[:2])  # failed as dead, not by evaluation
    (copy,) = [t for t in trials if t.user_attrs.get(rec.RERUN_OF_ATTR) is not None]  # once, not twice
    assert copy.user_attrs[rec.RERUN_OF_ATTR] == baseline.number and copy.state == TrialState.WAITING
    assert rec.fixed_params(copy) == rec.fixed_params(trials[0]) and lineage.place(copy) == baseline.number
    assert copy.user_attrs[rec.ROLE_ATTR] == "baseline"
    assert fresh.number not in [t.user_attrs.get(rec.RERUN_OF_ATTR) for t in trials]  # nothing to re-run
    summary = run_worker(
        url, model=str(search_assets.model), device="cpu", batch_size=16, heartbeat=1, grace=2
    )
    assert summary.evaluated == 3
    trials = storage.get_all_trials(main.study_id)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    done = next(t for t in trials if t.number == copy.number)
    assert done.state == TrialState.COMPLETE and done.system_attrs[rec.FAILED_TRIAL] == baseline.number
    assert sum(t.state in FINISHED for t in trials) == 3 == used_budget(trials)


def _pausing_factory(on_pause: Any) -> Any:
    """The real objective; during its first evaluation this worker is 'paused' while another worker
    sweeps its trial (``on_pause``), as a SIGSTOP past --grace would let happen."""
    paused: set[str] = set()  # once per kind: a search trial, a validation job

    def factory(net: Any, spec: Any, *, device: Any, batch_size: int) -> Any:
        objective = build_objective(net, spec, device=device, batch_size=batch_size)
        evaluate, blocks = objective.evaluate, objective.block_distances

        def paused_evaluate(schedule: Any) -> Any:
            for i, item in enumerate(evaluate(schedule)):
                if i == 0 and "" not in paused:
                    paused.add("")
                    on_pause("")
                yield item

        def paused_blocks(schedule: Any, **kw: Any) -> Any:
            result = blocks(schedule, **kw)
            if "/validate" not in paused:
                paused.add("/validate")
                on_pause("/validate")
            return result

        objective.evaluate = paused_evaluate  # type: ignore[method-assign]
        objective.block_distances = paused_blocks  # type: ignore[method-assign]
        return objective

    return factory


def _sweep_running(url: str, suffix: str) -> None:
    """Another worker's sweep of the (one) RUNNING trial of a study whose name contains ``suffix``."""
    storage = _plain(url)
    for s in storage.get_all_studies():
        running = storage.get_all_trials(s._study_id, states=(TrialState.RUNNING,))
        if suffix in s.study_name and running:
            study = optuna.load_study(study_name=s.study_name, storage=storage)
            assert lineage.rerun_stale(study, running[0], grace=0.0)
            return
    raise AssertionError("no RUNNING trial to sweep")


@pytest.mark.parametrize("stage", ["search", "validation"])
def test_trial_ended_elsewhere_is_dropped(search_assets: SearchAssets, tmp_path: Path, stage: str) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    held_out = ["--validate-samples", "16", "--validate-blocks", "4", "--growth-trials", "0"]
    extra = ["--no-validate"] if stage == "search" else [*held_out, "--refine-trials", "0", "--no-window"]
    assert cli([*search_assets.study_args(nfes="2", trials=2, storage=url), *extra]) == 0
    swept: list[str] = []

    def on_pause(suffix: str) -> None:
        if (suffix == "/validate") == (stage == "validation"):
            _sweep_running(url, suffix)
            swept.append(suffix)

    summary = run_worker(
        url, model=str(search_assets.model), device="cpu", batch_size=16, heartbeat=1, grace=2,
        objective_factory=_pausing_factory(on_pause),
    )  # fmt: skip
    assert swept and [o.state for o in summary.outcomes].count("dropped") == 1
    for name, trials in _all_trials(url).items():
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], name
        failed = [t for t in trials if t.state == TrialState.FAIL]
        if (stage == "validation") == ("/validate" in name):
            (dropped,) = failed  # the trial swept mid-evaluation, not overwritten by its late result
            assert rec.FAIL_ATTR not in dropped.user_attrs and dropped.value is None
            (rerun,) = [t for t in trials if t.system_attrs.get(rec.FAILED_TRIAL) == dropped.number]
            assert rerun.state in FINISHED and rec.fixed_params(rerun) == rec.fixed_params(dropped)
        else:
            assert not failed
        if "/validate" not in name:
            assert sum(t.state in FINISHED for t in trials) == 2 == used_budget(trials)


def test_two_copies_of_one_trial_run_once(search_assets: SearchAssets, tmp_path: Path) -> None:
    """A claimant that died half-way may leave a copy behind: the later copy is superseded when taken."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert cli([*search_assets.study_args(nfes="2", trials=2, storage=url), "--no-validate"]) == 0
    storage = open_storage(url)
    (main,) = find_studies(storage)
    study = optuna.load_study(study_name=main.name, storage=storage)
    original = study.ask()
    frozen = storage.get_trial(original._trial_id)
    assert lineage.enqueue_copy(study, frozen, stale=True) and lineage.enqueue_copy(study, frozen, stale=True)
    storage.set_trial_state_values(original._trial_id, TrialState.FAIL)
    summary = run_worker(
        url, model=str(search_assets.model), device="cpu", batch_size=16, heartbeat=1, grace=2
    )
    assert sorted(o.state for o in summary.outcomes if o.state not in FINISHED_NAMES) == ["superseded"]
    trials = storage.get_all_trials(main.study_id)
    copies = [t for t in trials if t.user_attrs.get(rec.RERUN_OF_ATTR) == original.number]
    assert [t.state for t in copies] == [TrialState.COMPLETE, TrialState.FAIL]
    assert copies[1].user_attrs[rec.FAIL_ATTR]["kind"] == rec.SUPERSEDED and not counts_against_budget(
        copies[1]
    )
    assert sum(t.state in FINISHED for t in trials) == 2 == used_budget(trials)


FINISHED_NAMES = ("complete", "pruned")


def test_gpu_failure_gives_the_trial_back_and_stops(search_assets: SearchAssets, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert cli([*search_assets.study_args(nfes="2", trials=2, storage=url), "--no-validate"]) == 0

    def lost_device(net: Any, spec: Any, *, device: Any, batch_size: int) -> Any:
        objective = build_objective(net, spec, device=device, batch_size=batch_size)

        def evaluate(schedule: Any) -> Any:
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors ...")
            yield  # a generator, as the real one

        objective.evaluate = evaluate  # type: ignore[method-assign]
        return objective

    with pytest.raises(SkiptuneError, match=r"^the device failed \(CUDA error: an illegal memory access"):
        run_worker(
            url,
            model=str(search_assets.model),
            device="cpu",
            heartbeat=1,
            grace=2,
            objective_factory=lost_device,
        )
    (trials,) = [t for name, t in _all_trials(url).items()]
    assert trials[0].user_attrs[rec.FAIL_ATTR]["kind"] == rec.RELEASED  # given back, not counted
    assert [t.state for t in trials[1:]] == [TrialState.WAITING]  # its copy waits for another worker
    assert trials[1].user_attrs[rec.RERUN_OF_ATTR] == trials[0].number


# ------------------------------------------------------------------------------ the storage boundary


def _wrapped(orig: BaseException) -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("INSERT ...", {}, orig)


def _raising(exc: BaseException) -> Any:
    def call() -> None:
        raise exc

    return call


def test_storage_errors_are_sorted() -> None:
    full = _wrapped(sqlite3.OperationalError("database or disk is full"))
    readonly = _wrapped(sqlite3.OperationalError("attempt to write a readonly database"))
    locked = _wrapped(sqlite3.OperationalError("database is locked"))
    assert classify(full) == classify(readonly) == PERMANENT
    assert classify(locked) == TRANSIENT
    try:
        raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from full
    except optuna.exceptions.StorageInternalError as exc:
        assert classify(exc) == PERMANENT
    assert classify(OSError(28, "No space left on device")) == PERMANENT
    dirty = sqlalchemy.exc.PendingRollbackError("Can't reconnect until invalid transaction is rolled back.")
    try:
        raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from dirty
    except optuna.exceptions.StorageInternalError as exc:
        assert classify(exc) == TRANSIENT
    assert classify(ValueError("not ours")) is None


def test_outage_past_the_timeout_is_one_line(caplog: pytest.LogCaptureFixture) -> None:
    refused = _wrapped(sqlite3.OperationalError("connection refused\nIs the server running on that host?"))
    calls: list[int] = []

    def down() -> None:
        calls.append(1)
        raise refused

    guard = StorageGuard(0.3)
    with caplog.at_level(logging.WARNING), pytest.raises(StorageUnavailable) as info:
        guard.call(down)
    message = str(info.value)
    assert "\n" not in message and "unreachable for 0.3 s (connection refused)" in message
    assert "--db-timeout" in message and len(calls) >= 2
    waiting = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert waiting == ["database unreachable (connection refused); retrying for up to 0.3 s"]
    # a permanent failure is not retried
    with pytest.raises(StorageUnavailable, match=r"refused a write \(database or disk is full\)"):
        StorageGuard(60).call(_raising(_wrapped(sqlite3.OperationalError("database or disk is full"))))


@pytest.fixture
def tiny_disk() -> Iterator[Path]:
    """An 8 MiB tmpfs of this test alone (needs root and mount; skipped otherwise)."""
    where = Path(tempfile.mkdtemp(prefix="skiptune-disk-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()[:100]}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def _fill(disk: Path) -> None:
    with contextlib.suppress(OSError), (disk / "filler").open("wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()


@pytest.mark.slow
def test_disk_full_mid_run_is_one_line(search_assets: SearchAssets, tiny_disk: Path) -> None:
    url = f"sqlite:///{tiny_disk / 's.db'}"
    assert cli([*search_assets.study_args(nfes="2", trials=2, storage=url), "--no-validate"]) == 0
    _fill(tiny_disk)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "skiptune",
        "worker",
        "--model",
        str(search_assets.model),
        "--device",
        "cpu",
    ]
    run = subprocess.run([*command, "--storage", url], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    errors = [line for line in run.stderr.splitlines() if "error" in line.lower()]
    assert "Traceback" not in run.stderr and len(errors) == 1, run.stderr
    assert "disk is full" in errors[0] and "free disk space" in errors[0], errors[0]


# ------------------------------------------------------------------- the fleet on a throwaway PostgreSQL


class ThrowawayPostgres:
    """A PostgreSQL cluster of this test alone: initdb + pg_ctl as the ``postgres`` user on a free port."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not bins or os.geteuid() != 0 or shutil.which("runuser") is None:
            pytest.skip("needs root, runuser and PostgreSQL's server binaries (/usr/lib/postgresql/*/bin)")
        self.bin = Path(bins[-1]).parent
        self.root = Path(tempfile.mkdtemp(prefix="skiptune-pg-"))
        shutil.chown(self.root, "postgres", "postgres")
        self.data = self.root / "data"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._as_postgres("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, tool: str, *args: str) -> None:
        command = ["runuser", "-u", "postgres", "--", str(self.bin / tool), *args]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    pg = ThrowawayPostgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.remove()


RIDE_OUT = ("--db-timeout", "120")  # fleet workers ride out the outage


def _catch(victims: list[subprocess.Popen[bytes]], url: str, timeout: float = 300) -> list[FrozenTrial]:
    """SIGSTOP the workers until each is caught inside the evaluation of a RUNNING trial (search or job:
    params drawn, so there is something to re-run); they stay frozen."""
    storage, caught = _plain(url), {}
    deadline = time.monotonic() + timeout
    while len(caught) < len(victims):
        assert time.monotonic() < deadline, "never caught the victims inside a trial"
        loose = [v for v in victims if v.pid not in caught]
        for v in loose:
            assert v.poll() is None, "a victim exited before it was caught"
            os.kill(v.pid, signal.SIGSTOP)
        running = [
            t for st in storage.get_all_studies()
            for t in storage.get_all_trials(st._study_id, states=(TrialState.RUNNING,))
        ]  # fmt: skip
        for v in loose:
            mine = [
                t
                for t in running
                if str(t.user_attrs.get(rec.WORKER_ATTR, "::")).split(":")[1] == str(v.pid)
                and len(rec.fixed_params(t)) == 2
            ]
            if mine:
                caught[v.pid] = mine[0]
            else:
                os.kill(v.pid, signal.SIGCONT)
        time.sleep(0.05)
    return [caught[v.pid] for v in victims]


def _finished(url: str) -> int:
    return sum(t.state in FINISHED for trials in _all_trials(url).values() for t in trials)


def _wait_for(condition: Any, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _state_of(url: str, trial: FrozenTrial) -> TrialState:
    with plain_storage(url) as storage:
        return storage.get_trial(trial._trial_id).state


@pytest.mark.slow
def test_fleet_rides_out_restart_kill_and_freeze(
    search_assets: SearchAssets, throwaway_postgres: ThrowawayPostgres, tmp_path: Path
) -> None:
    pg, url, budget = throwaway_postgres, throwaway_postgres.url, 8
    args = search_assets.study_args(nfes="2,3", trials=budget, storage=url, n_samples=32, rungs="16,32")
    stages = ["--growth-trials", "0", "--refine-trials", "0", "--no-window"]
    assert cli([*args, "--validate-samples", "32", "--validate-blocks", "4", *stages]) == 0
    # six workers: the two victims and four that race for the rest (more only cost start-up on 2 cores)
    logs = [tmp_path / f"w{i}.log" for i in range(6)]
    # the two victims first (batch size 1: long trials), caught inside their first trial
    killed_w = search_assets.worker(url, logs[0], batch_size=1, extra=RIDE_OUT)
    frozen_w = search_assets.worker(url, logs[1], batch_size=1, extra=RIDE_OUT)
    others: list[subprocess.Popen[bytes]] = []
    try:
        killed, frozen = _catch([killed_w, frozen_w], url)  # the frozen one stays so past --grace
        os.kill(killed_w.pid, signal.SIGKILL)
        killed_w.wait()
        others = [search_assets.worker(url, log, batch_size=4, extra=RIDE_OUT) for log in logs[2:]]
        _wait_for(lambda: _finished(url) >= 3, "the others to finish 3 trials")
        pg.stop()  # the database goes away mid-run for 5 s (1 s heartbeats: every live worker meets it)
        time.sleep(5)
        pg.start()
        _wait_for(lambda: _state_of(url, frozen) != TrialState.RUNNING, "the frozen trial to be swept")
        assert _state_of(url, frozen) == TrialState.FAIL
        os.kill(frozen_w.pid, signal.SIGCONT)
        codes = [w.wait(timeout=300) for w in [frozen_w, *others]]
    finally:
        for w in [killed_w, frozen_w, *others]:
            if w.poll() is None:
                os.kill(w.pid, signal.SIGCONT)
                w.kill()
    texts = [log.read_text() for log in logs]
    assert codes == [0] * 5, [t[-2000:] for t, c in zip(texts[1:], codes, strict=True) if c]
    assert not any("Traceback" in t for t in texts), next(t for t in texts if "Traceback" in t)[-3000:]
    assert any("database unreachable" in t for t in texts[1:])
    assert "dropping it" in texts[1]  # the frozen worker woke to find its trial re-run elsewhere
    _check_fleet(url, budget, [killed, frozen])


def _check_fleet(url: str, budget: int, victims: list[FrozenTrial]) -> None:
    studies = _all_trials(url)
    everything = [t for trials in studies.values() for t in trials]
    assert not [t for t in everything if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for name, trials in studies.items():
        finished = [t for t in trials if t.state in FINISHED]
        # 0 duplicates: each budget place (a trial and its re-runs) finished once
        places = [lineage.place(t) for t in finished]
        assert len(places) == len(set(places)), name
        # 0 lost: every trial whose worker died or gave it back, with params drawn, was re-run
        for t in trials:
            kind = (t.user_attrs.get(rec.FAIL_ATTR) or {}).get("kind")
            if t.state == TrialState.FAIL and kind in (None, rec.RELEASED) and rec.fixed_params(t):
                assert any(c.user_attrs.get(rec.RERUN_OF_ATTR) == t.number for c in trials), (name, t.number)
        if "/validate" not in name:
            assert len(finished) == budget == used_budget(trials), name  # the budget met exactly
    for victim in victims:  # both victims' trials were re-run (same params) and finished
        chain = [
            t for t in everything if rec.fixed_params(t) == rec.fixed_params(victim) and t.state in FINISHED
        ]
        assert chain, victim.number
    storage = open_storage(url)
    for study in find_studies(storage):
        exp = load_experiment(storage, study)
        assert exp.status() in (VALIDATED, NO_GAIN), study.name
        jobs = [t for r in exp.rounds for t in r.trials if t.state == TrialState.COMPLETE]
        keys = [tuple(sorted(rec.fixed_params(t).items())) for t in jobs]
        assert len(keys) == len(set(keys)) and keys, study.name  # each validation job evaluated exactly once


def test_worker_started_while_postgres_is_down_waits(
    search_assets: SearchAssets, throwaway_postgres: ThrowawayPostgres, tmp_path: Path
) -> None:
    """A worker (re)started during a database restart waits up to --db-timeout, then works."""
    pg, url = throwaway_postgres, throwaway_postgres.url
    assert cli([*search_assets.study_args(nfes="2,3", trials=1, storage=url), "--no-validate"]) == 0
    pg.stop()
    log = tmp_path / "w.log"
    worker = search_assets.worker(url, log, extra=("--db-timeout", "90"))
    try:
        _wait_for(lambda: "database unreachable" in log.read_text(), "the worker to wait", 60)
        time.sleep(2)
        assert worker.poll() is None, log.read_text()  # still waiting, not exited 2
        pg.start()
        assert worker.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
    text = log.read_text()
    assert "Traceback" not in text and "database reachable again" in text, text[-3000:]
    assert _finished(url) == 2  # both studies' one trial


@pytest.mark.postgres
def test_worker_start_refused_by_the_server_fails_at_once(postgres_url: str) -> None:
    """Waiting cures an unreachable server, not a refusal (no such database): one line at once."""
    url = sqlalchemy.engine.make_url(postgres_url).set(database="skiptune_no_such_db").render_as_string(False)
    start = time.monotonic()
    with pytest.raises(SkiptuneError, match='database "skiptune_no_such_db" does not exist'):
        run_worker(url, model="demo", device="cpu", db_timeout=60)
    assert time.monotonic() - start < 15
