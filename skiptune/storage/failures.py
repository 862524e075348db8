"""Storage failures sorted by cause: transient (retry through the outage) or permanent (say so, stop).

Optuna, SQLAlchemy, the drivers and gRPC raise many exception types for one cause. :func:`classify`
sorts them: a *transient* failure (the server is down or restarting, a connection was cut, a lock or
statement timed out, SQLite is busy, the gRPC proxy is unreachable) can be retried; a *permanent* one
(disk full, read-only database, not a database, schema errors, a refused credential) cannot.
:func:`first_line` is the driver's own message, one line. The worker's storage boundary
(``search/worker/resilience.py``) and the proxy server (``proxy_server.py``) both judge by these.
"""

from __future__ import annotations

import errno
import re
import sys

import optuna
import sqlalchemy.exc

TRANSIENT, PERMANENT = "transient", "permanent"
# SQLSTATEs: connection exceptions, shutdown/starting up, lock/statement/idle timeouts, deadlocks.
_TRANSIENT_SQLSTATES = ("08", "57P", "40001", "40P01", "55P03", "57014", "25P03", "53300")
PERMANENT_WORDS = (
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


def first_line(exc: BaseException) -> str:
    """The driver's own message, first line only (SQLAlchemy appends a background-link paragraph)."""
    seen: BaseException = exc
    while True:
        inner = getattr(seen, "orig", None) or seen.__cause__
        if inner is None or inner is seen:
            break
        seen = inner
    if is_rpc_error(seen):
        return rpc_details(seen)
    text = _BACKGROUND.sub("", str(seen)).strip().splitlines()
    return text[0].strip() if text else type(seen).__name__


def classify(exc: BaseException) -> str | None:
    """TRANSIENT, PERMANENT, or None when ``exc`` is no storage failure at all."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT):
        return PERMANENT
    if is_rpc_error(exc):
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
    if any(w in message for w in PERMANENT_WORDS):
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


def is_rpc_error(exc: BaseException) -> bool:
    grpc = sys.modules.get("grpc")
    return grpc is not None and isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None))


def _classify_rpc(exc: BaseException) -> str:
    code = getattr(exc.code(), "name", "")  # type: ignore[attr-defined]
    if code in _TRANSIENT_RPC:
        return TRANSIENT
    if code == "UNKNOWN":
        message = rpc_details(exc).lower()
        if any(w in message for w in PERMANENT_WORDS):
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
