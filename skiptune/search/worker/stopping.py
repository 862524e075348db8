"""Graceful stop on SIGINT/SIGTERM: the current trial is released (re-enqueued), then the worker exits 0.

The signal handler only interrupts the objective's own computation (between the storage calls
that report and tell), so a signal never cuts a database transaction in half.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class WorkerStopped(BaseException):
    """Raised inside an evaluation when a stop was requested (BaseException: objectives must not catch it)."""


class StopSignal:
    def __init__(self) -> None:
        self.requested = False
        self._interruptible = False
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only; a worker run in a thread just polls `requested`
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if self._interruptible:
            self._interruptible = False
            raise WorkerStopped(signal.Signals(signum).name)

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """Code inside may be interrupted by :class:`WorkerStopped`."""
        if self.requested:
            raise WorkerStopped("stop requested")
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False
