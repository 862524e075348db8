"""The coordination benchmark runs end to end on a tiny config: real workers, real studies, exact budgets.

Only its correctness outputs are asserted (budget met exactly, no params evaluated twice, no failure, no
locked database); CI never times anything.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest_plugins = ["storage_fixtures"]  # postgres_url
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
WORKERS, STUDIES, ROUNDS = 2, 2, 3


def _run_benchmark(storage: str, tmp_path: Path, *extra: str) -> dict:  # type: ignore[type-arg]
    out = tmp_path / "scaling.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable, str(ROOT / "benchmarks" / "service_scaling.py"), "--storage", storage,
        "--workers", str(WORKERS), "--duration", "0.2", "--studies", str(STUDIES), "--rounds", str(ROUNDS),
        "--heartbeat", "2", "--grace", "10", "--timeout", "120", "--out", str(out), *extra,
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


def _check(result: dict, backend: str) -> None:  # type: ignore[type-arg]
    (run,) = result["runs"]
    assert run["backend"] == backend and run["workers"] == WORKERS and run["skipped"] is None
    assert run["budget_met"] is True
    assert run["evaluated"] == STUDIES * run["trials_per_study"] == WORKERS * ROUNDS
    assert run["duplicates"] == 0 and run["failures"] == 0 and run["worker_errors"] == []
    assert run["log_errors"] == 0
    assert run["db_calls_per_trial"] > 0 and run["trials_per_hour"] > 0  # measured, whatever the value
    assert run["db_calls_per_trial_by_method"]["read_many"] > 0  # the loop reads its studies at once
    assert result["ok"] is True


def test_tiny_config_on_sqlite(tmp_path: Path) -> None:
    result = _run_benchmark("sqlite", tmp_path, "--jitter", "0.5")
    _check(result, "sqlite")
    assert result["runs"][0]["jitter"] == 0.5


@pytest.mark.postgres
def test_tiny_config_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    result = _run_benchmark(postgres_url, tmp_path)  # the benchmark makes (and drops) its own database
    _check(result, "postgresql")
    assert 1 <= result["runs"][0]["connections_peak"] <= result["runs"][0]["max_connections"]


@pytest.mark.postgres
def test_tiny_config_through_the_proxy(postgres_url: str, tmp_path: Path) -> None:
    pytest.importorskip("grpc", reason="grpcio is not installed (extra `grpc`): the proxy cannot run")
    proxy = ("--via-proxy", "--proxy-threads", "2", "--proxy-processes", "2")
    result = _run_benchmark(postgres_url, tmp_path, *proxy)
    (run,) = result["runs"]
    assert run["backend"] == "postgresql+proxy x2" and run["budget_met"] is True and result["ok"] is True
    assert run["evaluated"] == WORKERS * ROUNDS and run["duplicates"] == 0 and run["worker_errors"] == []
    assert run["sql_statements_per_trial"] == 0  # the workers ran no SQL: the proxy did
    assert run["db_calls_per_trial"] > 0 and run["proxy_cpu_ms_per_trial"] > 0
    assert 1 <= run["connections_peak"] <= 2 * (2 + 4)  # the proxy's 2 pools (2 threads + 4), not per worker


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose parent is ``pid``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append((int(stat.parent.name), (stat.parent / "cmdline").read_text().replace("\0", " ")))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _in_session(sid: int) -> list[int]:
    """The processes of session ``sid`` (the proxy's: it runs in a session of its own)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[4]) == sid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


@pytest.mark.postgres
def test_ctrl_c_writes_what_was_measured_and_stops_the_proxy(postgres_url: str, tmp_path: Path) -> None:
    pytest.importorskip("grpc", reason="grpcio is not installed (extra `grpc`): the proxy cannot run")
    out = tmp_path / "scaling.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable, str(ROOT / "benchmarks" / "service_scaling.py"), "--storage", postgres_url,
        "--workers", "2", "--duration", "60", "--studies", "2", "--rounds", "2", "--via-proxy",
        "--proxy-threads", "2", "--proxy-processes", "2", "--timeout", "120", "--out", str(out),
    ]  # fmt: skip
    with (tmp_path / "bench.log").open("wb") as log:  # a session of its own: Ctrl-C reaches its whole group
        bench = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 120
        proxies: list[tuple[int, str]] = []
        while not proxies and time.monotonic() < deadline and bench.poll() is None:
            proxies = [c for c in _children(bench.pid) if "skiptune proxy" in c[1]]
            time.sleep(0.5)
        assert proxies, (tmp_path / "bench.log").read_text()
        time.sleep(8)  # its workers start (or are starting: a Ctrl-C then is handled the same way)
        os.killpg(bench.pid, signal.SIGINT)  # as a terminal's Ctrl-C, or `timeout -s INT`
        assert bench.wait(60) == 130, (tmp_path / "bench.log").read_text()
    finally:
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)
            bench.wait()
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    assert result["interrupted"] is True and run["interrupted"] is True and result["ok"] is False
    assert run["evaluated"] == 0  # 60 s trials: none finished; what the workers measured is still there
    assert _in_session(proxies[0][0]) == []  # the proxy and its server processes are gone
