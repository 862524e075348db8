"""`skiptune proxy` for real: a proxy subprocess on 127.0.0.1 in front of SQLite/PostgreSQL, used
through ``open_storage("grpc://...")``, checked against the database read directly."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_query import _fill
from test_study import make_spec

from skiptune.cli import main as cli
from skiptune.storage import open_storage

pytest.importorskip("grpc", reason="grpcio is not installed (extra `grpc`): the proxy cannot run")

pytest_plugins = ["storage_fixtures"]  # storage_url (sqlite + postgresql), postgres_url

optuna.logging.set_verbosity(optuna.logging.WARNING)
START_TIMEOUT_S = 30.0  # importing optuna + sqlalchemy on a busy shared CPU
STOP_TIMEOUT_S = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proxy_command(db_url: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "skiptune",
        "proxy",
        "--storage",
        db_url,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


class Proxy:
    """A running ``skiptune proxy`` subprocess; its stdout+stderr go to a log file (no pipe to fill)."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process, self.port, self.log_path = process, port, log
        self.url = f"grpc://127.0.0.1:{port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_accepting(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    f"skiptune proxy exited with {self.process.returncode} before serving:\n{self.log()}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        pytest.fail(
            f"skiptune proxy not accepting on 127.0.0.1:{self.port} after {START_TIMEOUT_S} s:\n{self.log()}"
        )

    def terminate(self) -> int:
        """SIGTERM, then the exit status (fails the test if it does not exit in time)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"skiptune proxy still running {STOP_TIMEOUT_S} s after SIGTERM:\n{self.log()}")


@contextmanager
def running_proxy(db_url: str, log: Path) -> Iterator[Proxy]:
    port = _free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(_proxy_command(db_url, port), stdout=out, stderr=subprocess.STDOUT)
    proxy = Proxy(process, port, log)
    try:
        proxy.wait_accepting()
        yield proxy
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(STOP_TIMEOUT_S)


def _ask_tell_through(storage: optuna.storages.BaseStorage, rng: random.Random) -> list[tuple[float, float]]:
    """Three complete trials with intermediate values and a pruned one; (x, value) of the complete ones."""
    study = optuna.create_study(study_name="via-proxy", storage=storage, direction="minimize")
    study.set_user_attr("origin", "grpc")
    done = []
    for _ in range(3):
        trial = study.ask()
        x = trial.suggest_float("x", -2.0, 2.0)
        value = (x - 0.3) ** 2 + rng.uniform(0.1, 1.0)
        trial.report(value + 1.0, step=8)
        trial.set_user_attr("noise_free", (x - 0.3) ** 2)
        study.tell(trial, value)
        done.append((x, value))
    pruned = study.ask()
    pruned.suggest_float("x", -2.0, 2.0)
    study.tell(pruned, state=TrialState.PRUNED)
    return done


def test_proxy_round_trip_and_sigterm(storage_url: str, tmp_path: Path) -> None:
    rng = random.Random(random.randrange(2**32))
    with running_proxy(storage_url, tmp_path / "proxy.log") as proxy:
        with warnings.catch_warnings():
            warnings.simplefilter("error", optuna.exceptions.ExperimentalWarning)  # kept off stderr
            storage = open_storage(proxy.url)
        assert isinstance(storage, optuna.storages.GrpcStorageProxy)
        done = _ask_tell_through(storage, rng)
        # Read back through the proxy, then from the database itself (new storage: empty cache).
        via_proxy = optuna.load_study(study_name="via-proxy", storage=open_storage(proxy.url))
        direct = optuna.load_study(study_name="via-proxy", storage=storage_url)
        for study in (via_proxy, direct):
            assert study.user_attrs == {"origin": "grpc"}
            trials = study.get_trials(deepcopy=False)
            assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED]
            assert [(t.params["x"], t.value) for t in trials[:3]] == done
            assert [t.intermediate_values for t in trials[:3]] == [{8: v + 1.0} for _, v in done]
            assert [t.user_attrs["noise_free"] for t in trials[:3]] == [(x - 0.3) ** 2 for x, _ in done]
            assert study.best_value == min(v for _, v in done)
        assert proxy.terminate() == 0
    log = proxy.log()
    assert "serving" in log and "proxy stopped (SIGTERM)" in log
    assert "Traceback" not in log and "ExperimentalWarning" not in log, log


def test_best_and_study_list_through_proxy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db_url = f"sqlite:///{tmp_path / 'q.db'}"
    with running_proxy(db_url, tmp_path / "proxy.log") as proxy:
        points = _fill(proxy.url, 9, random.Random(random.randrange(2**32)))  # skiptune's create_studies
        b, t, v = min(points, key=lambda p: p[2])
        shown, listed = {}, {}
        for url in (proxy.url, db_url):  # through the proxy, and the database itself
            assert cli(["best", "--model", "tiny", "--nfe", "9", "--storage", url, "--json"]) == 0
            shown[url] = json.loads(capsys.readouterr().out)
            assert cli(["study", "list", "--storage", url, "--json"]) == 0
            listed[url] = json.loads(capsys.readouterr().out)
        best = shown[proxy.url]
        assert (best["rho_bottom"], best["rho_top"], best["value"], best["baseline_value"]) == (b, t, v, 14.0)
        assert best == shown[db_url]
        assert [r["study"] for r in listed[proxy.url]] == [make_spec(9).name]
        assert listed[proxy.url] == listed[db_url]
        assert proxy.terminate() == 0


def test_second_proxy_on_a_busy_port_fails_clearly(tmp_path: Path) -> None:
    with running_proxy(f"sqlite:///{tmp_path / 'a.db'}", tmp_path / "a.log") as first:
        second = subprocess.run(
            _proxy_command(f"sqlite:///{tmp_path / 'b.db'}", first.port),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
        )
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"cannot listen on 127.0.0.1:{first.port}" in second.stderr
        assert "another --port" in second.stderr
        assert first.process.poll() is None  # the first proxy is untouched
        assert first.terminate() == 0
