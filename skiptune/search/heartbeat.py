"""A heartbeat for one trial, beating from a thread while the main thread evaluates.

Optuna records heartbeats only inside ``Study.optimize``; workers use ask/tell (they pick among
several studies and claim budget slots), so they beat themselves with the storage's own
``record_heartbeat``. The first beat is written before returning: a trial without any heartbeat
row is never considered stale by Optuna, so a worker killed before its first beat would leave it
RUNNING forever.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from types import TracebackType

import optuna
from optuna.storages import BaseStorage

_log = logging.getLogger(__name__)


def heartbeat_interval(storage: BaseStorage) -> int | None:
    get = getattr(storage, "get_heartbeat_interval", None)
    return get() if get is not None else None


class Heartbeat:
    """``with Heartbeat(storage, trial_id):`` beats every ``heartbeat_interval`` seconds (no-op if off)."""

    def __init__(self, storage: BaseStorage, trial_id: int) -> None:
        self._storage = storage
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
            except optuna.exceptions.StorageInternalError as exc:
                # A lost beat is retried at the next interval; the grace period covers a few misses.
                _log.warning("heartbeat of trial %d failed: %s", self._trial_id, exc)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class StaleSweep:
    """``sweep(study)`` fails the study's stale trials (Optuna's ``fail_stale_trials``), at most once per
    heartbeat interval per study; True when it ran (the study's trials may have changed).

    A trial turns stale only after the grace period without a beat, so sweeping at every turn of the
    worker loop (one query per study per trial claimed) found nothing new almost every time; once per
    interval finds a dead worker's trial at most one interval later.
    """

    def __init__(self, storage: BaseStorage) -> None:
        self._every = heartbeat_interval(storage)
        self._last: dict[str, float] = {}

    def __call__(self, study: optuna.Study) -> bool:
        if self._every is None:
            return False
        now = time.monotonic()
        if now - self._last.get(study.study_name, -float("inf")) < self._every:
            return False
        self._last[study.study_name] = now
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        return True
