"""The coordination benchmark runs end to end on a tiny config: real workers, real studies, exact budgets.

Only its correctness outputs are asserted (budget met exactly, no params evaluated twice, no failure, no
locked database); CI never times anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
