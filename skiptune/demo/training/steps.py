"""The bookkeeping every training loop here shares: stop at a step count or a time limit, whichever comes
first, and keep a mean-loss entry every ``log_every`` steps (also passed to ``log``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

LogFn = Callable[[dict[str, Any]], None]


class StepLog:
    """Count steps, sum their losses on the device (no sync per step), and say when to stop.

    ``names``: the names of the losses :meth:`add` gets, in order; an entry reads
    ``{"step", <extra>, "seconds", <names>}``, each loss the mean over the steps since the last entry.
    """

    def __init__(
        self,
        *,
        steps: int,
        max_seconds: float | None,
        log_every: int,
        log: LogFn | None = None,
        names: tuple[str, ...] = ("loss",),
    ) -> None:
        self.steps, self.max_seconds, self.log_every, self.log = steps, max_seconds, log_every, log
        self.names = names
        self.entries: list[dict[str, float]] = []
        self.step = 0
        self.start = time.perf_counter()
        self._running: torch.Tensor | None = None

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def running(self) -> bool:
        """True until ``steps`` steps were counted."""
        return self.step < self.steps

    def add(self, *losses: torch.Tensor, **extra: float) -> bool:
        """Count one step with its losses (one per name); True when training is to stop here."""
        values = torch.stack([loss.detach().float() for loss in losses])
        self._running = values if self._running is None else self._running + values
        self.step += 1
        elapsed = self.seconds
        done = self.step >= self.steps or (self.max_seconds is not None and elapsed >= self.max_seconds)
        if self.step % self.log_every == 0 or done:
            n = self.step % self.log_every or self.log_every
            means = (self._running / n).tolist()
            entry = {"step": self.step, **extra, "seconds": round(elapsed, 2), **dict(zip(self.names, means))}
            self.entries.append(entry)
            self._running = None
            if self.log:
                self.log(entry)
        return done
