"""``open_storage(url)``: the Optuna storage for a URL, with engine settings per database.

Every worker is its own process with its own engine, so pools stay small; SQLite is made safe for
a few concurrent processes (WAL, busy timeout, write lock taken at BEGIN).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.engine
import sqlalchemy.exc
from optuna.trial import FrozenTrial

from skiptune.errors import SkiptuneError
from skiptune.storage.url import is_proxy_url, mask_url, normalize_url

#: Seconds a SQLite connection waits for another process's write lock before failing.
SQLITE_BUSY_TIMEOUT_S = 60.0

#: Server-side limits (milliseconds) set on every PostgreSQL session, so a frozen worker (SIGSTOP,
#: a hung host) cannot hold locks or a connection slot forever: Optuna's transactions are short,
#: so a minute idle inside one, or waiting for a lock, means its owner is gone.
POSTGRES_SESSION_SETTINGS = {
    "idle_in_transaction_session_timeout": 60_000,
    "lock_timeout": 60_000,
    "statement_timeout": 120_000,
}

POSTGRES_ENGINE_KWARGS: dict[str, Any] = {
    "pool_pre_ping": True,  # a worker idle for hours must not fail on a connection the server dropped
    # One process per GPU: one pooled connection each. The heartbeat thread's beat, when it meets a
    # call of the loop, takes a second one for a moment (overflow, closed when returned); pool_size 2
    # kept both open, 2 x workers in steady state (benchmarks/service_scaling.py, docs/distributed.md).
    "pool_size": 1,
    "max_overflow": 4,
    "pool_recycle": 1800,
    "connect_args": {
        "connect_timeout": 10,
        # TCP keepalives: a server (or network) that vanished is noticed in about a minute, not hours.
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        "options": " ".join(f"-c {k}={v}" for k, v in POSTGRES_SESSION_SETTINGS.items()),
    },
}

GRPC_CONNECT_TIMEOUT_S = 10.0  # how long a verb waits for the gRPC storage proxy to answer


def open_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    read_only: bool = False,
    wait: bool = True,
    pool_size: int | None = None,
) -> optuna.storages.BaseStorage:
    """Open (and create the tables of) the storage at ``url``.

    ``heartbeat_interval``/``grace_period`` (seconds) turn on Optuna's heartbeat: a RUNNING trial
    whose process stopped beating for ``grace_period`` is stale (workers sweep those themselves,
    ``skiptune.search.worker.stale``; ``stale_trial_callback`` serves Optuna's own ``fail_stale_trials``).

    ``read_only`` (the query verbs): a SQLite file must exist already (a typo'd path is refused, not
    created) and is opened read-only, so a database on a read-only disk or of another user can be
    read; other backends are opened as usual.
    """
    url = normalize_url(url)
    if is_proxy_url(url):
        return _open_grpc(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period, wait=wait)
    if url.startswith("sqlite") and read_only:
        return _open_sqlite_read_only(url)
    if url.startswith("sqlite"):
        _check_sqlite_path(url)
        kwargs: dict[str, Any] = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    else:
        kwargs = {**POSTGRES_ENGINE_KWARGS, "connect_args": dict(POSTGRES_ENGINE_KWARGS["connect_args"])}
        if pool_size is not None:
            kwargs["pool_size"] = pool_size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat arguments
            storage = optuna.storages.RDBStorage(
                url,
                engine_kwargs=kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=stale_trial_callback,
            )
    except ImportError as exc:
        raise SkiptuneError(
            f"cannot open {mask_url(url)!r}: the database driver is missing ({exc.__cause__ or exc}); "
            "install it with: pip install 'skiptune[postgres]'"
        ) from None
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
        if not wait and _unreachable(url, exc):
            raise
        raise SkiptuneError(
            f"cannot open storage {mask_url(url)!r}: {_first_line(exc)}; {_advice(url)}"
        ) from None
    if url.startswith("sqlite"):
        _configure_sqlite(storage.engine)
    return storage


#: What the server says when it refuses for good at connection time (psycopg gives no SQLSTATE then).
_REFUSALS = (
    "password authentication failed", "does not exist", "no pg_hba.conf entry", "failed to resolve host",
    "could not translate host name", "sslmode", "certificate",
)  # fmt: skip


def _unreachable(url: str, exc: BaseException) -> bool:
    """Whether an error while opening means "not reachable now" (refused, restarting, cut off, SQLite
    busy) rather than a refusal of this user, database, host name or file, which waiting cannot cure."""
    message = _first_line(exc).lower()
    if url.startswith("sqlite"):
        return "database is locked" in message
    if any(w in message for w in _REFUSALS):
        return False
    cause = getattr(exc, "orig", None) or exc.__cause__ or exc
    return isinstance(exc, sqlalchemy.exc.OperationalError) or "OperationalError" in type(cause).__name__


def _advice(url: str) -> str:
    if url.startswith("sqlite"):
        return (
            "check that the file is a SQLite database written by skiptune or Optuna, that it and its "
            "folder are writable, and that the disk has free space"
        )
    return (
        "check that the database server is running and reachable, and that the user, password and "
        "database name are right"
    )


def require_existing_sqlite(url: str) -> Path:
    """The file of a SQLite URL, which must exist: for verbs that never create studies (query, worker),
    a missing file is a typo, and creating it would only hide that."""
    database = sqlalchemy.engine.make_url(url).database
    if not database or database == ":memory:" or not Path(database).expanduser().is_file():
        raise SkiptuneError(
            f"no SQLite database at {database!r} (storage {url!r}); check the path, or create studies "
            "there first with `skiptune study create`"
        )
    return Path(database).expanduser().resolve()


def _open_sqlite_read_only(url: str) -> optuna.storages.BaseStorage:
    """Open an existing SQLite file with ``mode=ro``: nothing is created, written or locked."""
    path = require_existing_sqlite(url)
    # mode=ro reads alongside live writers; a WAL database in a read-only folder has no -shm file and
    # cannot be opened so: there, nobody can be writing, and immutable=1 reads the file as it is.
    failure: BaseException | None = None
    for flags in ("mode=ro", "immutable=1"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    f"sqlite:///file:{path}?{flags}&uri=true",
                    engine_kwargs={"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}},
                    skip_table_creation=True,
                )
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            failure = failure or exc
    assert failure is not None
    raise SkiptuneError(
        f"cannot read storage {url!r}: {_first_line(failure)}; check that the file is a SQLite database "
        "written by skiptune or Optuna"
    ) from None


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc.__cause__ or exc
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]


def _check_sqlite_path(url: str) -> None:
    database = sqlalchemy.engine.make_url(url).database
    if not database or database == ":memory:":
        return
    parent = Path(database).expanduser().resolve().parent
    if not parent.is_dir():
        raise SkiptuneError(
            f"cannot create SQLite database {database!r}: its directory {str(parent)!r} does not "
            "exist; create it first (mkdir -p) or pass another --storage sqlite:///PATH"
        )


def _configure_sqlite(engine: sqlalchemy.engine.Engine) -> None:
    """WAL + busy timeout on every connection, and ``BEGIN IMMEDIATE`` transactions.

    WAL lets readers run while one process writes. With plain deferred transactions a process
    that read first and writes second fails at once with SQLITE_BUSY when another process wrote in
    between (the busy timeout does not apply to that case), so every transaction takes the write
    lock when it starts, and waits up to the busy timeout for it (SQLAlchemy's pysqlite recipe).
    """

    @sqlalchemy.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    @sqlalchemy.event.listens_for(engine, "begin")
    def _on_begin(connection: sqlalchemy.engine.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    # Connections pooled while Optuna created the tables predate these listeners.
    engine.dispose()


def _open_grpc(
    url: str, *, heartbeat_interval: int | None, grace_period: int | None, wait: bool
) -> optuna.storages.BaseStorage:
    try:
        import grpc
    except ImportError:
        raise SkiptuneError(
            f"cannot open {url!r}: grpcio is not installed; install it with: pip install 'skiptune[grpc]'"
        ) from None
    from skiptune.storage.proxy_client import CA_ENV, TOKEN_ENV, FleetProxy

    parsed = sqlalchemy.engine.make_url(url)
    if not parsed.host or not parsed.port:
        raise SkiptuneError(
            f"bad gRPC storage URL {url!r}: expected grpc://HOST:PORT (plain text, loopback) or "
            "grpcs://HOST:PORT (TLS), e.g. grpcs://proxy-host:13000"
        )
    tls = url.startswith("grpcs://")
    proxy = FleetProxy(
        host=parsed.host, port=parsed.port, tls=tls,
        heartbeat_interval=heartbeat_interval, grace_period=grace_period,
    )  # fmt: skip
    try:
        proxy.wait_server_ready(timeout=GRPC_CONNECT_TIMEOUT_S if wait else 1.0)
    except grpc.RpcError as exc:
        proxy.close()  # a worker tries again with a new channel: this one must not linger
        code = exc.code()
        if code == grpc.StatusCode.UNAUTHENTICATED:
            have = (
                f"${TOKEN_ENV} is set but is not the proxy's token"
                if os.environ.get(TOKEN_ENV)
                else (f"${TOKEN_ENV} is not set")
            )
            raise SkiptuneError(
                f"the gRPC storage proxy at {url!r} refused this process: {have}; set {TOKEN_ENV} to the "
                "token the proxy was started with"
            ) from None
        if not wait and code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise
        raise SkiptuneError(
            f"cannot reach the gRPC storage proxy at {url!r} ({code.name}: {exc.details()}); "
            + _grpc_advice(tls, parsed.port, CA_ENV)
        ) from None
    return proxy


def _grpc_advice(tls: bool, port: int, ca_env: str) -> str:
    if tls:
        return (
            f"check that the proxy runs with --tls-cert/--tls-key, that ${ca_env} names the CA that "
            "signed its certificate, and that the host name matches the certificate"
        )
    return (
        f"start it with: skiptune proxy --storage DB_URL --port {port}; a proxy with TLS "
        "(--tls-cert) is reached as grpcs://HOST:PORT"
    )
