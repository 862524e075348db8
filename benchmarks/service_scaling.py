"""Coordination cost of the worker service: N real worker processes, a stand-in evaluation of fixed duration.

Each run creates real studies of the bundled demo model (``skiptune study create``, no validation stage)
in a fresh database (PostgreSQL: a new database on the server of ``--storage``, dropped afterwards;
SQLite: a new file), starts N processes that each call ``skiptune.search.worker.run_worker`` (the loop of
``skiptune worker``: study choice, stale-trial checks, ask, budget claim, heartbeat, rung reports, pruner,
tell, end-of-work wait), and replaces only the evaluation, through ``run_worker(objective_factory=...)``,
by a stand-in that sleeps ``--duration`` seconds in total and reports every rung (the same value at every
rung but the last, so nothing is pruned and every trial lasts the full duration).

Timing starts when every worker has loaded the model and is about to claim its first trial; it ends at
the last trial's completion (``datetime_complete``). The ideal is N x 3600 / duration trials per hour;
each worker runs about ``--rounds`` trials. The steady-state rate leaves out the first and the last N
completions (all workers asking at once at the start, idle workers at the end of the work): it is the
rate a long-running fleet keeps up.

Database time is measured inside every worker process around the storage calls: every method of
Optuna's ``RDBStorage`` is wrapped, and skiptune's one read of all a loop's studies
(``records.read_many``; through the proxy ``FleetProxy.read_many``, one call) (the outermost call per
thread counts, so nested calls are not counted twice;
calls answered by Optuna's in-process cache never reach it). It includes SQLAlchemy and
Optuna's own Python work per call, not only the time the server takes; the SQL-only share (SQLAlchemy
``before/after_cursor_execute``) is reported next to it. ``db_ms_per_trial`` is the worker loop's
(main thread's) storage time divided by the trials it evaluated; heartbeat threads are reported apart.

Checks per run: every study's budget met exactly, no params evaluated twice, no failed trial, no worker
error, no "database is locked" in the workers' logs.

    python benchmarks/service_scaling.py --workers 1,2,4,8,16,32 --duration 5 --out scaling.json
    python benchmarks/service_scaling.py --storage sqlite --workers 2,4,8,16 --duration 1
    python benchmarks/service_scaling.py --workers 16 --duration 5,1,0.25     # duration sweep
    python benchmarks/service_scaling.py --via-proxy --workers 64,128 --duration 5   # through the proxy

``--via-proxy``: the workers reach the fresh database only through a ``skiptune proxy`` subprocess on
127.0.0.1 (``grpc://``); their storage time is then the time of the gRPC calls (Optuna's
``GrpcStorageProxy`` methods), the SQL is the proxy's, and the proxy's own CPU is reported apart
(``proxy_cpu_ms_per_trial``). Database connections are the proxy's.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import functools
import inspect
import json
import math
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_STORAGE = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
LOG_ERRORS = re.compile(r"database is locked|OperationalError|Traceback|StorageInternalError")
CONNECTION_MARGIN = 20  # connections of the shared server a run leaves to others
_NOT_DB = {
    "get_heartbeat_interval",
    "get_failed_trial_callback",
    "get_heartbeat_stale_trial_callback",
    "_build_frozen_trial_from_trial_model",  # decodes rows already read, called inside reads
}


@dataclass(frozen=True)
class RunConfig:
    storage: str  # "sqlite" or a PostgreSQL admin URL
    workers: int
    duration: float
    trials_per_study: int
    studies: int
    heartbeat: int
    grace: int
    start_method: str
    timeout: float
    workdir: str
    profile: str | None = None  # a folder: each worker's cProfile stats from the common start
    jitter: float = 0.0  # each trial lasts duration x U(1 - jitter, 1 + jitter): the mean stays duration
    via_proxy: bool = False  # workers reach the database through a `skiptune proxy` subprocess
    proxy_threads: int = 16
    proxy_processes: int = 1


# ------------------------------------------------------------------ inside a worker process


class StandIn:
    """The evaluation, replaced: ``duration`` seconds of sleep (times a random factor around 1 with
    ``jitter``), split over the study's rungs."""

    def __init__(self, spec: Any, duration: float, jitter: float = 0.0) -> None:
        self._spec = spec
        self._duration = duration
        self._jitter = jitter
        self._rng = random.Random(os.getpid())

    def identity(self) -> dict[str, Any]:
        return dict(self._spec.objective_identity())  # the study's own: the worker's check passes

    def evaluate(self, schedule: Any) -> Iterator[tuple[int, float]]:
        rungs = list(self._spec.objective.rungs)
        duration = self._duration * self._rng.uniform(1 - self._jitter, 1 + self._jitter)
        for i, n in enumerate(rungs):
            time.sleep(duration / len(rungs))
            last = i == len(rungs) - 1  # earlier rungs tie: the pruner keeps ties, so nothing is pruned
            yield n, 1.0 + (schedule.rho_bottom - 0.7) ** 2 + (schedule.rho_top - 0.9) ** 2 if last else 1.0

    def block_distances(self, schedule: Any, *, seed_base: int, n_samples: int, blocks: int) -> Any:
        from skiptune.errors import EvaluationError

        raise EvaluationError("the stand-in evaluates search trials only: create studies with --no-validate")


class DbClock:
    """Seconds and calls spent in storage (``RDBStorage`` methods) and in SQL, per thread kind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()
        self.storage_s: Counter[str] = Counter()
        self.storage_calls: Counter[str] = Counter()
        self.sql_s: Counter[str] = Counter()
        self.sql_statements: Counter[str] = Counter()
        self.by_method_s: Counter[str] = Counter()  # the loop's storage time per RDBStorage method
        self.by_method_calls: Counter[str] = Counter()

    @staticmethod
    def _kind() -> str:
        return "loop" if threading.current_thread() is threading.main_thread() else "heartbeat"

    def _add(self, seconds: Counter[str], calls: Counter[str], elapsed: float) -> None:
        kind = self._kind()
        with self._lock:
            seconds[kind] += elapsed
            calls[kind] += 1

    def install(self) -> None:
        import sqlalchemy.event
        from optuna.storages import GrpcStorageProxy, RDBStorage
        from sqlalchemy.engine import Engine

        for cls in (RDBStorage, GrpcStorageProxy):
            for name, fn in inspect.getmembers(cls, inspect.isfunction):
                plain = not isinstance(inspect.getattr_static(cls, name), (staticmethod, classmethod))
                if plain and not name.startswith(("__", "_setup")) and name not in _NOT_DB:
                    setattr(cls, name, self._timed(fn))
        from skiptune.search.records import _TrialCache  # the loop's one read of all its studies

        _TrialCache.refresh = self._timed(_TrialCache.refresh, "read_many")  # type: ignore[method-assign]
        from skiptune.storage.proxy_client import FleetProxy  # the same read through the proxy: one call

        FleetProxy.read_many = self._timed(FleetProxy.read_many, "read_many")  # type: ignore[method-assign]
        sqlalchemy.event.listen(Engine, "before_cursor_execute", self._before)
        sqlalchemy.event.listen(Engine, "after_cursor_execute", self._after)

    def _timed(self, fn: Any, name: str | None = None) -> Any:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(self._local, "depth", 0)
            self._local.depth = depth + 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._local.depth = depth
                if depth == 0:
                    elapsed = time.perf_counter() - start
                    self._add(self.storage_s, self.storage_calls, elapsed)
                    if self._kind() == "loop":
                        self.by_method_s[name or fn.__name__] += elapsed
                        self.by_method_calls[name or fn.__name__] += 1

        return timed

    def _before(self, conn: Any, *_args: Any) -> None:
        conn.info.setdefault("_bench_t0", []).append(time.perf_counter())

    def _after(self, conn: Any, *_args: Any) -> None:
        self._add(self.sql_s, self.sql_statements, time.perf_counter() - conn.info["_bench_t0"].pop())

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "storage_s": dict(self.storage_s),
                "storage_calls": dict(self.storage_calls),
                "sql_s": dict(self.sql_s),
                "sql_statements": dict(self.sql_statements),
                "by_method_s": dict(self.by_method_s),
                "by_method_calls": dict(self.by_method_calls),
            }


def _memory_mib() -> dict[str, float]:
    """This process's RSS and PSS (shared pages divided among their sharers), MiB."""
    out = {}
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                out[key.lower() + "_mib"] = int(rest.split()[0]) / 1024
    except OSError:
        pass
    return out


def _worker_main(index: int, url: str, config: RunConfig, ready: Any, go: Any, results: Any) -> None:
    log = Path(config.workdir) / f"worker{index}.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    clock = DbClock()
    clock.install()
    from skiptune.search.worker.loop import run_worker

    started: dict[str, float] = {}

    def factory(net: Any, spec: Any, *, device: Any, batch_size: int) -> StandIn:
        if not started:  # the first claim waits until every worker is ready: one common start
            ready.put({"index": index, **_memory_mib()})
            go.wait(timeout=config.timeout)
            started["cpu"] = time.process_time()
            if profiler is not None:
                profiler.enable()
        return StandIn(spec, config.duration, config.jitter)

    profiler = cProfile.Profile(time.process_time) if config.profile else None  # CPU, not waits

    result: dict[str, Any] = {"index": index, "pid": os.getpid()}
    try:
        summary = run_worker(
            url, model="demo", device="cpu", batch_size=1, heartbeat=config.heartbeat,
            grace=config.grace, worker_index=index, objective_factory=factory,
        )  # fmt: skip
        result["outcomes"] = dict(Counter(o.state for o in summary.outcomes))
    except BaseException as exc:  # reported, counted as a failure of the run
        result["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    # CPU seconds of this process (all threads) from the common start to its exit: the worker's own
    # coordination work, whatever else loads the machine
    result["cpu_s"] = time.process_time() - started["cpu"] if started else 0.0
    if profiler is not None and config.profile:
        profiler.disable()
        profiler.dump_stats(Path(config.profile) / f"n{config.workers}_worker{index}.prof")
    result.update(clock.to_dict(), exit_time=time.time(), **_memory_mib())
    results.put(result)


# ------------------------------------------------------------------ databases


def _psycopg_conninfo(url: str) -> str:
    import sqlalchemy.engine

    return sqlalchemy.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _admin(url: str) -> Any:
    import psycopg

    return psycopg.connect(_psycopg_conninfo(url), autocommit=True, connect_timeout=10)


class Database:
    """A fresh database for one run: a new PostgreSQL database (dropped at close) or a new SQLite file."""

    def __init__(self, storage: str, workdir: Path) -> None:
        self.storage = storage
        self.name = f"skiptune_scaling_{uuid.uuid4().hex[:10]}"
        if storage == "sqlite":
            self.url = f"sqlite:///{workdir / 'studies.db'}"
            return
        import sqlalchemy.engine

        with _admin(storage) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self.url = sqlalchemy.engine.make_url(storage).set(database=self.name).render_as_string(False)

    @property
    def is_postgres(self) -> bool:
        return self.storage != "sqlite"

    def close(self) -> None:
        if self.is_postgres:
            with _admin(self.storage) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class Monitor(threading.Thread):
    """Samples the load average (and, on PostgreSQL, the run's connections) while workers run."""

    def __init__(self, db: Database) -> None:
        super().__init__(daemon=True)
        self._db = db
        self._halt = threading.Event()
        self.loads: list[float] = []
        self.connections: list[int] = []
        self.max_connections: int | None = None
        self._backend_cpu: dict[int, float] = {}  # the run's server processes (when on this machine)

    @property
    def server_cpu_s(self) -> float:
        return sum(self._backend_cpu.values())

    def run(self) -> None:
        conn = _admin(self._db.storage) if self._db.is_postgres else None
        try:
            if conn is not None:
                self.max_connections = int(conn.execute("SHOW max_connections").fetchone()[0])
            while not self._halt.wait(0.25):
                self.loads.append(os.getloadavg()[0])
                if conn is not None:
                    rows = conn.execute(
                        "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self._db.name,)
                    ).fetchall()
                    self.connections.append(len(rows))
                    for (pid,) in rows:
                        self._backend_cpu[pid] = _cpu_seconds(pid) or self._backend_cpu.get(pid, 0.0)
        finally:
            if conn is not None:
                conn.close()

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _cpu_seconds(pid: int) -> float | None:
    """user + system CPU seconds of a process on this machine (None when it is not visible)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _create_studies(url: str, config: RunConfig) -> None:
    nfes = ",".join(str(3 + i) for i in range(config.studies))
    command = [
        sys.executable, "-m", "skiptune", "study", "create", "--model", "demo", "--sampler", "euler",
        "--nfe", nfes, "--extractor", "fmnist-classifier", "--reference", "demo", "--n-samples", "1000",
        "--rungs", "200,1000", "--trials", str(config.trials_per_study), "--no-validate", "--storage", url,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise SystemExit(f"study create failed: {done.stderr.strip()[-500:]}")


# ------------------------------------------------------------------ one run


@dataclass
class RunResult:
    backend: str
    workers: int
    duration_s: float
    studies: int
    trials_per_study: int
    jitter: float = 0.0
    evaluated: int = 0
    window_s: float | None = None
    trials_per_hour: float | None = None
    ideal_per_hour: float = 0.0
    efficiency: float | None = None
    # the same without the first and the last N completions (start-up burst and end of work): the
    # rate a long-running fleet keeps up
    steady_trials_per_hour: float | None = None
    steady_efficiency: float | None = None
    db_ms_per_trial: float | None = None
    db_calls_per_trial: float | None = None
    sql_ms_per_trial: float | None = None
    sql_statements_per_trial: float | None = None
    worker_cpu_ms_per_trial: float | None = None  # CPU time of the worker processes, not wall time
    server_cpu_ms_per_trial: float | None = None  # CPU time of the run's PostgreSQL backends (sampled)
    proxy_cpu_ms_per_trial: float | None = None  # CPU of the `skiptune proxy` process (--via-proxy)
    heartbeat_db_ms_total: float = 0.0
    connections_peak: int | None = None
    connections_median: int | None = None  # while trials run (the peak may be start-up)
    max_connections: int | None = None
    load_avg_before: float = 0.0
    load_avg_mean: float | None = None
    load_avg_max: float | None = None
    pss_mib_per_worker: float | None = None
    rss_mib_per_worker: float | None = None
    start_s: float | None = None  # from launch until every worker was ready
    drain_s: float | None = None  # from the last trial's end until the last worker exited
    budget_met: bool = False
    duplicates: int = 0
    failures: int = 0
    over_budget_refusals: int = 0
    db_ms_per_trial_by_method: dict[str, float] = field(default_factory=dict)
    db_calls_per_trial_by_method: dict[str, float] = field(default_factory=dict)
    worker_errors: list[str] = field(default_factory=list)
    log_errors: int = 0
    skipped: str | None = None
    interrupted: bool = False  # cut by a Ctrl-C: what its workers measured until then
    # filled while workers run, read by the summary; not part of the report
    _go: float = field(default=0.0, repr=False)
    _loop: tuple[float, int, float, int] = field(default=(0.0, 0, 0.0, 0), repr=False)
    _cpu_s: float = field(default=0.0, repr=False)
    _server_cpu_s: float = field(default=0.0, repr=False)
    _proxy_cpu_s: float | None = field(default=None, repr=False)
    _last_exit: float | None = field(default=None, repr=False)
    _by_method_s: Counter[str] = field(default_factory=Counter, repr=False)
    _by_method_calls: Counter[str] = field(default_factory=Counter, repr=False)

    def report(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


def backend_name(config: RunConfig) -> str:
    backend = "sqlite" if config.storage == "sqlite" else "postgresql"
    return f"{backend}+proxy x{config.proxy_processes}" if config.via_proxy else backend


def run_once(config: RunConfig) -> RunResult:
    result = RunResult(
        backend_name(config), config.workers, config.duration, config.studies, config.trials_per_study,
        config.jitter,
    )  # fmt: skip
    result.load_avg_before = os.getloadavg()[0]
    db = Database(config.storage, Path(config.workdir))
    try:
        _create_studies(db.url, config)
        if config.via_proxy:
            with ProxyProcess(
                db.url, Path(config.workdir), threads=config.proxy_threads, processes=config.proxy_processes
            ) as proxy:
                _run_workers(db, config, result, url=proxy.url)
                result._proxy_cpu_s = proxy.cpu_s()
        else:
            _run_workers(db, config, result, url=db.url)
        _check_trials(db.url, config, result)
    finally:
        db.close()
    return result


class ProxyProcess:
    """``skiptune proxy`` on 127.0.0.1 in front of ``db_url`` (a free port), stopped with SIGTERM."""

    def __init__(
        self, db_url: str, workdir: Path, *, threads: int = 16, processes: int = 1, port: int | None = None
    ) -> None:
        self.db_url, self.workdir, self.threads, self.processes = db_url, workdir, threads, processes
        self.port = port or _free_port()
        self.url = f"grpc://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self._cpu_at_start = 0.0

    def start(self) -> None:
        command = [
            sys.executable, "-m", "skiptune", "proxy", "--storage", self.db_url, "--port", str(self.port),
            "--threads", str(self.threads), "--processes", str(self.processes),
        ]  # fmt: skip
        with (self.workdir / "proxy.log").open("ab") as log:  # own session: a Ctrl-C reaches it through stop
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"skiptune proxy exited {self.process.returncode}: {self.log()[-500:]}")
            if "serving" in self.log():
                time.sleep(1.0)  # its server processes bind
                self._cpu_at_start = _tree_cpu_seconds(self.process.pid)
                return
            time.sleep(0.2)
        raise SystemExit(f"skiptune proxy did not start in 60 s: {self.log()[-500:]}")

    def log(self) -> str:
        path = self.workdir / "proxy.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def cpu_s(self) -> float | None:
        if self.process is None:
            return None
        return _tree_cpu_seconds(self.process.pid) - self._cpu_at_start

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL to the proxy's whole process group (its server processes too) after
        ``timeout`` seconds or at a further Ctrl-C: never hangs."""
        if self.process is None:
            return
        try:
            with _on_sigint(_end_wait):
                if self.process.poll() is None:
                    self.process.terminate()
                    self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        with _on_sigint(signal.SIG_IGN):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)  # stragglers of a proxy that hung or died
            self.process.wait()

    def __enter__(self) -> ProxyProcess:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def _on_sigint(handler: Any) -> Iterator[None]:
    """SIGINT handled by ``handler`` for a while (in the main thread; elsewhere signals never arrive)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _end_wait(_sig: int, _frame: Any) -> None:
    raise subprocess.TimeoutExpired("the proxy's stop", 0)


def _tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its children (the proxy's server processes)."""
    total = _cpu_seconds(pid) or 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                total += _cpu_seconds(int(stat.parent.name)) or 0.0
        except (OSError, ValueError, IndexError):
            continue
    return total


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_workers(db: Database, config: RunConfig, result: RunResult, *, url: str) -> None:
    ctx = multiprocessing.get_context(config.start_method)
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    launched = time.time()
    procs = [
        ctx.Process(target=_worker_main, args=(i, url, config, ready, go, results), daemon=True)
        for i in range(config.workers)
    ]
    for p in procs:
        p.start()
    monitor = Monitor(db)  # after the forks: children never inherit its thread or connection
    monitor.start()
    memory: list[dict[str, Any]] = []
    reports: list[dict[str, Any]] = []
    try:
        memory = _wait_ready(ready, procs, config.timeout)
        go.set()
        result.start_s = time.time() - launched
        result._go = time.time()
        _collect(results, procs, config.timeout + config.workers * config.duration * 10, reports)
    except KeyboardInterrupt:
        result.interrupted = True
        _wind_down(results, procs, reports)
    monitor.stop()
    _summarise_workers(result, reports, memory, monitor, config)


def _wind_down(
    results: Any, procs: list[Any], out: list[dict[str, Any]], timeout: float = 15.0
) -> list[dict[str, Any]]:
    """After a Ctrl-C: the workers are asked to stop (SIGINT: each gives its trial back and reports);
    those that have not reported after ``timeout`` s, or at a further Ctrl-C, are killed."""
    for p in procs:
        if p.is_alive() and p.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGINT)
    try:
        with _on_sigint(_end_wait):
            _gather(results, procs, timeout, out)
    except subprocess.TimeoutExpired:
        pass
    with _on_sigint(signal.SIG_IGN):
        return _reap(procs, out)


def _wait_ready(ready: Any, procs: list[Any], timeout: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(out) < len(procs) and time.monotonic() < deadline:
        try:
            out.append(ready.get(timeout=1))
        except Exception:  # queue.Empty: check whether workers died before claiming
            if not any(p.is_alive() for p in procs):
                break
    return out


def _collect(
    results: Any, procs: list[Any], timeout: float, out: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The workers' reports, into ``out`` (what came before an interruption is kept), then their exits."""
    _gather(results, procs, timeout, out)
    for p in procs:
        p.join(timeout=5)
    return _reap(procs, out)


def _gather(results: Any, procs: list[Any], timeout: float, out: list[dict[str, Any]]) -> None:
    deadline = time.monotonic() + timeout
    while len(out) < len(procs) and time.monotonic() < deadline:
        try:
            out.append(results.get(timeout=1))
        except Exception:  # queue.Empty: stop once every worker is gone
            if not any(p.is_alive() for p in procs) and results.empty():
                break


def _reap(procs: list[Any], out: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Kill the workers still alive; a worker that exited without a report is an error of the run."""
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join()
    for p in procs:
        if p.exitcode not in (0, None) and not any(r["pid"] == p.pid for r in out):
            out.append({"index": -1, "pid": p.pid, "error": f"worker process exited {p.exitcode}"})
    return out


def _summarise_workers(
    result: RunResult, reports: list[dict[str, Any]], memory: list[dict[str, Any]], monitor: Monitor,
    config: RunConfig,
) -> None:  # fmt: skip
    result.worker_errors = [r["error"] for r in reports if "error" in r]
    if len(reports) < config.workers:
        result.worker_errors.append(f"{config.workers - len(reports)} workers never reported (timeout)")
    loop_s = sum(r.get("storage_s", {}).get("loop", 0.0) for r in reports)
    loop_calls = sum(r.get("storage_calls", {}).get("loop", 0) for r in reports)
    sql_s = sum(r.get("sql_s", {}).get("loop", 0.0) for r in reports)
    result.heartbeat_db_ms_total = 1000 * sum(r.get("storage_s", {}).get("heartbeat", 0.0) for r in reports)
    statements = sum(r.get("sql_statements", {}).get("loop", 0) for r in reports)
    result._loop = (loop_s, loop_calls, sql_s, statements)
    result._cpu_s = sum(r.get("cpu_s", 0.0) for r in reports)
    result._server_cpu_s = monitor.server_cpu_s
    for r in reports:
        result._by_method_s.update(r.get("by_method_s", {}))
        result._by_method_calls.update(r.get("by_method_calls", {}))
    if memory:
        result.pss_mib_per_worker = max(m.get("pss_mib", 0.0) for m in memory)
        result.rss_mib_per_worker = max(m.get("rss_mib", 0.0) for m in memory)
    exits = [r["exit_time"] for r in reports if "exit_time" in r]
    result._last_exit = max(exits) if exits else None
    result.connections_peak = max(monitor.connections) if monitor.connections else None
    if monitor.connections:
        result.connections_median = sorted(monitor.connections)[len(monitor.connections) // 2]
    result.max_connections = monitor.max_connections
    if monitor.loads:
        result.load_avg_mean = round(sum(monitor.loads) / len(monitor.loads), 2)
        result.load_avg_max = round(max(monitor.loads), 2)
    logs = [Path(config.workdir) / f"worker{i}.log" for i in range(config.workers)]
    result.log_errors = sum(
        len(LOG_ERRORS.findall(p.read_text(errors="replace"))) for p in logs if p.exists()
    )


def _check_trials(url: str, config: RunConfig, result: RunResult) -> None:
    from optuna.trial import TrialState

    from skiptune.search.budget import FAIL_ATTR, OVER_BUDGET, used_budget
    from skiptune.search.records import WORKER_ATTR
    from skiptune.search.study import find_studies
    from skiptune.storage import open_storage

    storage = open_storage(url)
    finished_states = (TrialState.COMPLETE, TrialState.PRUNED)
    met, evaluated, ends = True, [], []
    for s in find_studies(storage):
        trials = storage.get_all_trials(s.study_id, deepcopy=False)
        finished = [t for t in trials if t.state in finished_states]
        active = [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
        met &= len(finished) == s.spec.n_trials == used_budget(trials) and not active
        mine = [t for t in finished if WORKER_ATTR in t.user_attrs]
        evaluated += mine
        params = Counter(tuple(sorted(t.params.items())) for t in mine)
        result.duplicates += sum(n - 1 for n in params.values())
        for t in trials:
            fail = t.user_attrs.get(FAIL_ATTR)
            if t.state == TrialState.FAIL and isinstance(fail, dict) and fail.get("kind") == OVER_BUDGET:
                result.over_budget_refusals += 1
            elif t.state == TrialState.FAIL:
                result.failures += 1
        ends += [t.datetime_complete for t in mine if t.datetime_complete is not None]
    storage.engine.dispose()  # type: ignore[attr-defined]
    result.budget_met = met and len(find_studies(open_storage(url))) == config.studies
    result.failures += len(result.worker_errors)
    _throughput(result, evaluated, ends, config)


def _throughput(result: RunResult, evaluated: list[Any], ends: list[dt.datetime], config: RunConfig) -> None:
    result.evaluated = len(evaluated)
    result.ideal_per_hour = config.workers * 3600 / config.duration
    loop_s, loop_calls, sql_s, statements = result._loop
    last_exit, go = result._last_exit, result._go
    if not evaluated or not ends:
        return
    last = max(ends).timestamp()  # Optuna writes naive local times, in this machine's clock
    result.window_s = round(last - go, 3)
    result.trials_per_hour = round(len(evaluated) * 3600 / (last - go), 1)
    result.efficiency = round(result.trials_per_hour / result.ideal_per_hour, 3)
    times, n = sorted(e.timestamp() for e in ends), config.workers
    if len(times) > 2 * n and times[-n - 1] > times[n - 1]:
        result.steady_trials_per_hour = round((len(times) - 2 * n) * 3600 / (times[-n - 1] - times[n - 1]), 1)
        result.steady_efficiency = round(result.steady_trials_per_hour / result.ideal_per_hour, 3)
    result.db_ms_per_trial = round(1000 * loop_s / len(evaluated), 1)
    result.db_calls_per_trial = round(loop_calls / len(evaluated), 1)
    result.sql_ms_per_trial = round(1000 * sql_s / len(evaluated), 1)
    result.sql_statements_per_trial = round(statements / len(evaluated), 1)
    result.worker_cpu_ms_per_trial = round(1000 * result._cpu_s / len(evaluated), 1)
    if result._server_cpu_s:
        result.server_cpu_ms_per_trial = round(1000 * result._server_cpu_s / len(evaluated), 1)
    if result._proxy_cpu_s is not None:
        result.proxy_cpu_ms_per_trial = round(1000 * result._proxy_cpu_s / len(evaluated), 1)
    n = len(evaluated)
    for name, seconds in result._by_method_s.most_common():
        result.db_ms_per_trial_by_method[name] = round(1000 * seconds / n, 2)
        result.db_calls_per_trial_by_method[name] = round(result._by_method_calls[name] / n, 2)
    result.drain_s = round(last_exit - last, 2) if last_exit else None


# ------------------------------------------------------------------ driver


def _preload() -> None:
    """Import the heavy modules once in this process: forked workers share their pages."""
    import skiptune.nets.registry
    import skiptune.search.worker.loop  # noqa: F401


def _memory_guard(n: int, pss_mib: float | None, limit_gib: float) -> str | None:
    available = _mem_available_mib()
    if pss_mib is not None and n * pss_mib > limit_gib * 1024:
        return (
            f"{n} workers x {pss_mib:.0f} MiB PSS = {n * pss_mib / 1024:.1f} GiB > the {limit_gib} GiB limit"
        )
    if available is not None and pss_mib is not None and n * pss_mib > 0.8 * available:
        return f"{n} workers x {pss_mib:.0f} MiB PSS exceed 80% of the {available / 1024:.1f} GiB available"
    return None


def _connection_guard(storage: str, n: int, per_worker: float) -> str | None:
    """Never crowd the shared server: leave ``CONNECTION_MARGIN`` connections to everybody else."""
    if storage == "sqlite":
        return None
    with _admin(storage) as conn:
        limit = int(conn.execute("SHOW max_connections").fetchone()[0])
        used = int(conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
                   .fetchone()[0])  # fmt: skip
    free = limit - used - CONNECTION_MARGIN
    if n * per_worker > free:
        return (
            f"{n} workers x {per_worker:.1f} connections each (measured) > {free} free of max_connections "
            f"{limit} ({used} in use, {CONNECTION_MARGIN} kept for others)"
        )
    return None


def _mem_available_mib() -> float | None:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return None


def _print(r: RunResult) -> None:
    if r.skipped:
        print(f"{r.backend:10s} N={r.workers:3d} d={r.duration_s:5.2f}s  skipped: {r.skipped}", flush=True)
        return
    print(
        f"{r.backend:10s} N={r.workers:3d} d={r.duration_s:5.2f}s  {r.evaluated:4d} trials  "
        f"{r.trials_per_hour or 0:9.0f}/h of {r.ideal_per_hour:9.0f}/h  eff {r.efficiency or 0:5.3f} "
        f"(steady {r.steady_efficiency})  "
        f"db {r.db_ms_per_trial} ms/trial ({r.db_calls_per_trial} calls; sql {r.sql_ms_per_trial} ms, "
        f"{r.sql_statements_per_trial} statements)  "
        f"cpu {r.worker_cpu_ms_per_trial} + server {r.server_cpu_ms_per_trial} "
        f"+ proxy {r.proxy_cpu_ms_per_trial} ms/trial  "
        f"conns {r.connections_median}/{r.connections_peak}  load {r.load_avg_mean}  "
        f"pss {r.pss_mib_per_worker or 0:.0f} MiB  "
        f"start {r.start_s or 0:.1f}s drain {r.drain_s}s  budget {'ok' if r.budget_met else 'MISSED'}  "
        f"dup {r.duplicates} fail {r.failures} refused {r.over_budget_refusals} log-errors {r.log_errors}",
        flush=True,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="1,2,4,8,16,32,64", help="worker counts (default: %(default)s)")
    p.add_argument("--duration", default="5", help="stand-in seconds per trial; a list sweeps (default: 5)")
    p.add_argument(
        "--trials", type=int, default=None, help="budget per study (default: --rounds x N / studies)"
    )
    p.add_argument("--rounds", type=int, default=6, help="trials per worker when --trials is not given")
    p.add_argument("--studies", type=int, default=4, help="studies (NFEs 3, 4, ...) (default: %(default)s)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="PostgreSQL URL of the server, or 'sqlite'")
    p.add_argument("--heartbeat", type=int, default=30, help="worker heartbeat, s (default: %(default)s)")
    p.add_argument("--grace", type=int, default=120, help="worker grace period, s (default: %(default)s)")
    p.add_argument("--start-method", default="fork", choices=["fork", "spawn"], help="(default: %(default)s)")
    p.add_argument(
        "--max-memory-gib", type=float, default=10.0, help="workers' PSS limit (default: %(default)s)"
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for workers to start")
    p.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    p.add_argument("--via-proxy", action="store_true", help="workers reach the database via `skiptune proxy`")
    p.add_argument("--proxy-threads", type=int, default=16, help="the proxy's --threads (default: 16)")
    p.add_argument("--proxy-processes", type=int, default=1, help="the proxy's --processes (default: 1)")
    p.add_argument(
        "--jitter", type=float, default=0.0, help="trial length varies by +-this fraction (default: 0, fixed)"
    )
    p.add_argument(
        "--profile", type=Path, default=None, help="write each worker's cProfile stats (from the start) here"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the sweep, writing ``--out`` after every run. A Ctrl-C (or ``timeout -s INT``) ends the run in
    progress (its workers give their trials back; what they measured is summarised and written, marked
    ``interrupted``), stops the proxy and exits 130."""
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _preload()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    runs: list[RunResult] = []
    try:
        for result in _sweep(args):
            _print(result)
            runs.append(result)
            _write(args.out, runs, interrupted=result.interrupted)
            if result.interrupted:
                return 130
    except KeyboardInterrupt:  # between runs, or while one was set up: the runs so far are kept
        _write(args.out, runs, interrupted=True)
        return 130
    return 0 if _ok(runs) else 1


def _ok(runs: list[RunResult]) -> bool:
    return all(r.skipped or (r.budget_met and not r.duplicates and not r.failures) for r in runs)


def _write(out: Path | None, runs: list[RunResult], *, interrupted: bool) -> None:
    """After every run: a cut-off sweep keeps what it measured."""
    if out is not None:
        payload = {"machine": _machine(), "runs": [r.report() for r in runs], "ok": _ok(runs)}
        out.write_text(json.dumps({**payload, "interrupted": interrupted}, indent=2) + "\n")


def _sweep(args: argparse.Namespace) -> Iterator[RunResult]:
    """One result per (duration, worker count): measured, or skipped by the memory or connection guard."""
    workers = [int(x) for x in args.workers.split(",")]
    pss: float | None = None
    per_worker = 2.0  # connections per worker until measured
    for duration in [float(x) for x in args.duration.split(",")]:
        for n in workers:
            trials = args.trials or max(1, math.ceil(args.rounds * n / args.studies))
            with tempfile.TemporaryDirectory(prefix="skiptune-scaling-") as workdir:
                config = RunConfig(
                    args.storage, n, duration, trials, args.studies, args.heartbeat, args.grace,
                    args.start_method, args.timeout, workdir,
                    str(args.profile) if args.profile else None, args.jitter, args.via_proxy,
                    args.proxy_threads, args.proxy_processes,
                )  # fmt: skip
                reason = _memory_guard(n, pss, args.max_memory_gib) or _connection_guard(
                    args.storage, args.proxy_threads + 5 if args.via_proxy else n, per_worker
                )
                if reason is not None:
                    yield RunResult(backend_name(config), n, duration, args.studies, trials, skipped=reason)
                    continue
                result = run_once(config)
            # the last run's: forked workers share more pages the more of them there are
            pss = result.pss_mib_per_worker or pss
            if result.connections_peak:
                per_worker = result.connections_peak / n  # the last run's, as for memory
            yield result


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "mem_total_gib": round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1),
        "python": sys.version.split()[0],
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


if __name__ == "__main__":
    sys.exit(main())
