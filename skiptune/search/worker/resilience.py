"""The worker's storage boundary: ride out a database outage, turn every other storage failure into one line.

Optuna, SQLAlchemy and the drivers raise many exception types for one cause.
``skiptune.storage.failures.classify`` sorts them: a *transient* failure (the server is down or
restarting, a connection was cut, a lock or statement timed out, SQLite is busy) is retried with
exponential backoff for up to ``--db-timeout`` seconds, saying so in one log line; a *permanent* one
(disk full, read-only database, not a database, schema errors) is reported at once. Either way the user
sees one line naming the cause and what to do (:class:`StorageUnavailable`, a ``SkiptuneError``: exit
code 2), never a driver traceback.

The guard also remembers when the storage last came back (the heartbeat thread reports its failed
beats here too): for one grace period after an outage no worker could beat, so the stale sweep
waits before it judges anyone dead (``stale.py``).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from skiptune.errors import SkiptuneError
from skiptune.storage.failures import (
    PERMANENT,
    PERMANENT_WORDS,
    classify,
    first_line,
    is_rpc_error,
    rpc_details,
)

_log = logging.getLogger(__name__)
T = TypeVar("T")

#: Default of ``worker --db-timeout``: how long a worker waits for its database to come back.
DEFAULT_DB_TIMEOUT_S = 300.0
FIRST_WAIT_S, MAX_WAIT_S = 0.5, 5.0

class StorageUnavailable(SkiptuneError):
    """The storage failed for good (gone past the timeout, or a permanent failure): one line, exit 2."""


def permanent_failure(exc: BaseException) -> StorageUnavailable:
    if is_rpc_error(exc):
        return StorageUnavailable(
            f"the gRPC storage proxy refused a call ({getattr(exc.code(), 'name', '?')}: "  # type: ignore[attr-defined]
            f"{rpc_details(exc)}); check the proxy's log, its token (SKIPTUNE_PROXY_TOKEN) and TLS "
            "settings, then start the worker again"
        )
    reason = first_line(exc)
    if any(w in reason.lower() for w in PERMANENT_WORDS):
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
