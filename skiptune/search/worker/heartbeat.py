"""A heartbeat for one trial, beating from a thread while the main thread evaluates.

Optuna records heartbeats only inside ``Study.optimize``; workers use ask/tell (they pick among
several studies and claim budget slots), so they beat themselves with the storage's own
``record_heartbeat``. The first beat is written before returning: a trial without any heartbeat
row is never considered stale by Optuna (skiptune's own sweep, ``stale.py``, handles those too).
A beat lost to a database outage is retried at the next interval; the outage is reported to the
worker's ``StorageGuard`` (one log line for the whole outage, and the sweep waits after it); the
worker's own next storage call, not a beat, declares the database back.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from optuna.storages import BaseStorage

from skiptune.search.records import reset_session
from skiptune.search.worker.resilience import StorageGuard
from skiptune.storage.failures import classify

_log = logging.getLogger(__name__)


def heartbeat_interval(storage: BaseStorage) -> int | None:
    get = getattr(storage, "get_heartbeat_interval", None)
    return get() if get is not None else None


class Heartbeat:
    """``with Heartbeat(storage, trial_id):`` beats every ``heartbeat_interval`` seconds (no-op if off)."""

    def __init__(self, storage: BaseStorage, trial_id: int, *, guard: StorageGuard | None = None) -> None:
        self._storage = storage
        self._guard = guard
        self._trial_id = trial_id
        self._interval = heartbeat_interval(storage)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if self._interval is not None:
            self._storage.record_heartbeat(self._trial_id)  # type: ignore[attr-defined]
            self._thread = threading.Thread(
                target=self._beat, name=f"heartbeat-{self._trial_id}", daemon=True
            )
            self._thread.start()
        return self

    def _beat(self) -> None:
        assert self._interval is not None
        while not self._stop.wait(self._interval):
            try:
                self._storage.record_heartbeat(self._trial_id)  # type: ignore[attr-defined]
            except Exception as exc:
                if classify(exc) is None:
                    raise
                # A lost beat is retried at the next interval; the grace period covers a few misses.
                reset_session(self._storage)  # this thread's session, maybe left needing a rollback
                if self._guard is not None:
                    self._guard.note_failure(exc)
                else:
                    _log.warning("heartbeat of trial %d failed: %s", self._trial_id, exc)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
