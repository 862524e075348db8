"""The worker's storage boundary: ride out a database outage, turn every other storage failure into one line.

Optuna, SQLAlchemy and the drivers raise many exception types for one cause. :func:`classify` sorts
them: a *transient* failure (the server is down or restarting, a connection was cut, a lock or
statement timed out, SQLite is busy) is retried with exponential backoff for up to ``--db-timeout``
seconds, saying so in one log line; a *permanent* one (disk full, read-only database, not a database,
schema errors) is reported at once. Either way the user sees one line naming the cause and what to
do (:class:`StorageUnavailable`, a ``SkiptuneError``: exit code 2), never a driver traceback.

The guard also remembers when the storage last came back (the heartbeat thread reports its failed
beats here too): for one grace period after an outage no worker could beat, so the stale sweep
waits before it judges anyone dead (``stale.py``).
"""

from __future__ import annotations

import errno
import logging
import random
import re
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import optuna
import sqlalchemy.exc

from skiptune.errors import SkiptuneError

_log = logging.getLogger(__name__)
T = TypeVar("T")

#: Default of ``worker --db-timeout``: how long a worker waits for its database to come back.
DEFAULT_DB_TIMEOUT_S = 300.0
FIRST_WAIT_S, MAX_WAIT_S = 0.5, 5.0

TRANSIENT, PERMANENT = "transient", "permanent"
# SQLSTATEs: connection exceptions, shutdown/starting up, lock/statement/idle timeouts, deadlocks.
_TRANSIENT_SQLSTATES = ("08", "57P", "40001", "40P01", "55P03", "57014", "25P03", "53300")
_PERMANENT_WORDS = (
    "disk is full", "no space left", "could not extend file", "readonly database", "read-only",
    "file is not a database", "unable to open database file",
)  # fmt: skip
_TRANSIENT_WORDS = (
    "rolled back",
    "database is locked",
    "connection",
    "server closed",
    "terminating",
    "timeout",
    "shutting down",
)


_BACKGROUND = re.compile(r"\s*\(Background on this error at: [^)]*\)")


class StorageUnavailable(SkiptuneError):
    """The storage failed for good (gone past the timeout, or a permanent failure): one line, exit 2."""


def first_line(exc: BaseException) -> str:
    """The driver's own message, first line only (SQLAlchemy appends a background-link paragraph)."""
    seen: BaseException = exc
    while True:
        inner = getattr(seen, "orig", None) or seen.__cause__
        if inner is None or inner is seen:
            break
        seen = inner
    if _is_rpc_error(seen):
        return rpc_details(seen)
    text = _BACKGROUND.sub("", str(seen)).strip().splitlines()
    return text[0].strip() if text else type(seen).__name__


def classify(exc: BaseException) -> str | None:
    """TRANSIENT, PERMANENT, or None when ``exc`` is no storage failure at all."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT):
        return PERMANENT
    if _is_rpc_error(exc):
        return _classify_rpc(exc)
    storage_types = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)
    if not isinstance(exc, storage_types):
        return None
    link: BaseException | None = exc
    while link is not None:
        if isinstance(link, sqlalchemy.exc.PendingRollbackError):
            return TRANSIENT  # a session left dirty by a cut connection: the guard resets it
        link = link.__cause__
    cause: BaseException = exc
    while not isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.__cause__ is not None:
        cause = cause.__cause__
    message = first_line(exc).lower()
    if any(w in message for w in _PERMANENT_WORDS):
        return PERMANENT
    sqlstate = str(getattr(getattr(cause, "orig", None), "sqlstate", "") or "")
    if sqlstate and sqlstate.startswith(_TRANSIENT_SQLSTATES):
        return TRANSIENT
    if isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.connection_invalidated:
        return TRANSIENT
    if isinstance(cause, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
        return TRANSIENT
    if isinstance(cause, (sqlalchemy.exc.TimeoutError, sqlalchemy.exc.DisconnectionError)):
        return TRANSIENT
    return TRANSIENT if any(w in message for w in _TRANSIENT_WORDS) else PERMANENT


# gRPC status codes (by name: grpcio is an optional extra) of a proxy that is down, restarting, busy or
# cut off: retried like a database outage. UNKNOWN is an exception inside the proxy (its database went
# away, say): judged by the message the proxy passes on.
_TRANSIENT_RPC = (
    "UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "RESOURCE_EXHAUSTED", "CANCELLED", "INTERNAL",
)  # fmt: skip


def _is_rpc_error(exc: BaseException) -> bool:
    grpc = sys.modules.get("grpc")
    return grpc is not None and isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None))


def _classify_rpc(exc: BaseException) -> str:
    code = getattr(exc.code(), "name", "")  # type: ignore[attr-defined]
    if code in _TRANSIENT_RPC:
        return TRANSIENT
    if code == "UNKNOWN":
        message = rpc_details(exc).lower()
        if any(w in message for w in _PERMANENT_WORDS):
            return PERMANENT
        return TRANSIENT if any(w in message for w in _TRANSIENT_WORDS + _RPC_TRANSIENT_WORDS) else PERMANENT
    return PERMANENT  # UNAUTHENTICATED, PERMISSION_DENIED, ...: retrying cannot help


_RPC_TRANSIENT_WORDS = ("operationalerror", "storageinternalerror", "could not", "unreachable")


def rpc_details(exc: BaseException) -> str:
    """A gRPC error's own message (the proxy's exception text for UNKNOWN), first line."""
    details = getattr(exc, "details", None)
    text = (details() if callable(details) else None) or str(exc)
    lines = text.strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


def permanent_failure(exc: BaseException) -> StorageUnavailable:
    if _is_rpc_error(exc):
        return StorageUnavailable(
            f"the gRPC storage proxy refused a call ({getattr(exc.code(), 'name', '?')}: "  # type: ignore[attr-defined]
            f"{rpc_details(exc)}); check the proxy's log, its token (SKIPTUNE_PROXY_TOKEN) and TLS "
            "settings, then start the worker again"
        )
    reason = first_line(exc)
    if any(w in reason.lower() for w in _PERMANENT_WORDS):
        return StorageUnavailable(
            f"the database refused a write ({reason}); free disk space or make the database "
            "writable (or point --storage elsewhere), then start the worker again"
        )
    return StorageUnavailable(
        f"the database failed ({reason}); check the database server's log and the storage URL, "
        "then start the worker again"
    )


class StorageGuard:
    """Retries storage work through outages of up to ``timeout_s`` seconds (see the module docstring)."""

    def __init__(
        self,
        timeout_s: float = DEFAULT_DB_TIMEOUT_S,
        *,
        reset: Callable[[], None] = lambda: None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        """``reset``: drop this thread's database session (a cut connection leaves it unusable)."""
        self.timeout_s = timeout_s
        self.reset = reset
        self._sleep = sleep
        self._down_since: float | None = None
        self._back_at = -float("inf")

    def call(self, fn: Callable[[], T], *, stopped: Callable[[], bool] = lambda: False) -> T:
        """``fn()``, called again after each transient storage failure until it succeeds or time is up.

        ``fn`` must be safe to repeat (reads, and writes that check what is there first).
        """
        wait = FIRST_WAIT_S
        while True:
            try:
                result = fn()
            except Exception as exc:
                self.ride_out(exc, wait=wait, stopped=stopped)
                wait = min(wait * 2, MAX_WAIT_S)
                continue
            self.note_success()
            return result

    def ride_out(
        self, exc: BaseException, *, wait: float = FIRST_WAIT_S, stopped: Callable[[], bool] = lambda: False
    ) -> None:
        """Sleep a backoff step for the transient storage failure ``exc``; raise anything else as one line."""
        kind = classify(exc)
        if kind is None:
            raise exc
        if kind == PERMANENT:
            raise permanent_failure(exc) from None
        down = self.note_failure(exc)
        self.reset()
        if time.monotonic() - down > self.timeout_s:
            raise StorageUnavailable(
                f"the database stayed unreachable for {self.timeout_s:g} s ({first_line(exc)}); check that "
                "the server is running and reachable, then start the worker again (--db-timeout waits longer)"
            ) from None
        if stopped():
            raise StorageUnavailable(
                f"stopped while the database was unreachable ({first_line(exc)})"
            ) from None
        self._sleep(wait * random.uniform(0.5, 1.0))  # jitter: a fleet must not reconnect in lockstep

    def note_failure(self, exc: BaseException) -> float:
        """Record a transient failure (the heartbeat thread calls this too); when the outage began."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            _log.warning(
                "database unreachable (%s); retrying for up to %g s", first_line(exc), self.timeout_s
            )
        return self._down_since

    def note_success(self) -> None:
        if self._down_since is not None:
            _log.warning("database reachable again after %.1f s", time.monotonic() - self._down_since)
            self._down_since = None
            self._back_at = time.monotonic()

    def quiet_for(self, seconds: float) -> bool:
        """Whether the storage has answered without failure for the last ``seconds`` seconds."""
        return self._down_since is None and time.monotonic() - self._back_at > seconds
