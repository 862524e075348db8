"""Storage contract: the same tests on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from skiptune.errors import SkiptuneError
from skiptune.storage import mask_url, normalize_url, open_storage

pytestmark = pytest.mark.filterwarnings(
    "ignore::optuna.exceptions.ExperimentalWarning", "ignore:Heartbeat of storage:UserWarning"
)
pytest_plugins = ["storage_fixtures"]  # storage_url, postgres_url, search_assets fixtures
optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_optuna_reads_what_we_write(storage_url: str) -> None:
    storage = open_storage(storage_url)
    study = optuna.create_study(study_name="m/heun/nfe=9/abc123", storage=storage)
    study.set_user_attr("skiptune_identity", {"nfe": 9})
    values = [0.25, 1.5, 0.125]
    for v in values:
        trial = study.ask()
        trial.suggest_float("rho_bottom", 0.5, 1.2)
        trial.report(v * 2, step=8)
        study.tell(trial, v)
    # Optuna alone, with its own URL handling, must read the same study.
    loaded = optuna.load_study(study_name="m/heun/nfe=9/abc123", storage=normalize_url(storage_url))
    assert [t.value for t in loaded.trials] == values
    assert [t.intermediate_values for t in loaded.trials] == [{8: v * 2} for v in values]
    assert loaded.user_attrs == {"skiptune_identity": {"nfe": 9}}
    assert loaded.best_value == 0.125


def test_concurrent_writers_get_unique_trial_numbers(storage_url: str) -> None:
    open_storage(storage_url)  # create tables once, as `study create` does
    optuna.create_study(study_name="s", storage=open_storage(storage_url))
    errors: list[BaseException] = []

    def work() -> None:
        try:
            study = optuna.load_study(study_name="s", storage=open_storage(storage_url))
            for _ in range(8):
                t = study.ask()
                study.tell(t, t.suggest_float("x", 0, 1))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    trials = optuna.load_study(study_name="s", storage=open_storage(storage_url)).trials
    assert sorted(t.number for t in trials) == list(range(32))
    assert all(t.state == TrialState.COMPLETE for t in trials)


def test_stale_trial_failed_once_and_callback_runs_once(storage_url: str) -> None:
    calls: list[int] = []
    stores: list[Any] = [
        open_storage(
            storage_url,
            heartbeat_interval=1,
            grace_period=1,
            stale_trial_callback=lambda s, t: calls.append(t.number),
        )
        for _ in range(2)
    ]
    study = optuna.create_study(study_name="hb", storage=stores[0])
    alive, dead = study.ask(), study.ask()
    stores[0].record_heartbeat(dead._trial_id)
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        stores[0].record_heartbeat(alive._trial_id)
        time.sleep(0.3)
    for store in stores:  # two workers look for stale trials; only one may fail (and re-run) it
        optuna.storages.fail_stale_trials(optuna.load_study(study_name="hb", storage=store))
    states = {t.number: t.state for t in optuna.load_study(study_name="hb", storage=stores[1]).trials}
    assert states == {alive.number: TrialState.RUNNING, dead.number: TrialState.FAIL}
    assert calls == [dead.number]


def test_sqlite_is_in_wal_mode_with_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    storage = open_storage(f"sqlite:///{path}")
    with storage.engine.connect() as conn:  # type: ignore[attr-defined]
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 60_000
    # WAL is a property of the file: a plain sqlite3 connection sees it too.
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SkiptuneError, match=r"does not exist.*mkdir"):
        open_storage(f"sqlite:///{tmp_path}/no/such/dir/x.db")


def test_postgres_urls_use_psycopg3() -> None:
    assert normalize_url("postgresql://u:p@h:5/db") == "postgresql+psycopg://u:p@h:5/db"
    assert normalize_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///a.db") == "sqlite:///a.db"


BAD_URLS = ["mysql://root:hunter2@h/db", "redis://:hunter2@h", "user:hunter2@localhost/db", "sqlite+foo:///x"]


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_scheme_is_one_clear_error_without_password(url: str) -> None:
    with pytest.raises(SkiptuneError) as info:
        open_storage(url)
    assert "hunter2" not in str(info.value)
    assert "sqlite" in str(info.value)


def test_unreachable_server_is_one_clear_error_without_password() -> None:
    with pytest.raises(SkiptuneError) as info:
        open_storage("postgresql://skip:hunter2@127.0.0.1:9/nodb")
    message = str(info.value)
    assert "hunter2" not in message and "skip:***@127.0.0.1:9" in message
    assert "reachable" in message


def test_mask_url() -> None:
    assert mask_url("postgresql+psycopg://u:secret@h/db") == "postgresql+psycopg://u:***@h/db"
    assert "secret" not in mask_url("garbage://u:secret@@h")


def test_grpc_without_grpcio_or_proxy_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("skiptune.storage.open.GRPC_CONNECT_TIMEOUT_S", 1.0)
    try:
        import grpc  # noqa: F401
    except ImportError:
        with pytest.raises(SkiptuneError, match=r"pip install 'skiptune\[grpc\]'"):
            open_storage("grpc://127.0.0.1:13000")
    else:
        with pytest.raises(SkiptuneError, match="skiptune proxy"):
            open_storage("grpc://127.0.0.1:9")
