"""One progress line for a run of workers: each stage's units done/total and the time left.

    0:41  search 9/16 trials (2 running) | validation 0/8 jobs | ~2:05 left

Stages are summed over the studies by kind (``skiptune.search.experiment.progress``), in the order they
first appear, so a new kind of stage shows up without a change here. On a terminal the line is redrawn
in place; elsewhere (a log file, a pipe) a new line is printed whenever a count changes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from skiptune.search.experiment.progress import StageProgress, seconds_left, seconds_per_sample_nfe

_UNITS = {"search": "trials", "grow": "trials", "refine": "trials", "window": "trials", "validation": "jobs"}
_LABELS = {"grow": "growth", "refine": "refinement"}


@dataclass(frozen=True)
class WorkerGroup:
    """``workers`` worker processes that share the studies of these NFEs (all NFEs: ``nfes`` None);
    ``validate_others``: once done with their own, they run any NFE's validation jobs too."""

    nfes: frozenset[int] | None
    workers: int
    validate_others: bool = False


def clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"


def stage_counts(progress: Sequence[StageProgress]) -> str:
    """``search 9/16 trials (2 running) | validation 0/8 jobs``: each kind of stage, summed."""
    kinds: dict[str, list[StageProgress]] = {}
    for p in progress:
        kinds.setdefault(p.stage, []).append(p)
    parts = []
    for kind, items in kinds.items():
        done, total = sum(p.done for p in items), sum(p.total for p in items)
        running = sum(p.running for p in items)
        label = _LABELS.get(kind, kind)
        busy = f" ({running} running)" if running else ""
        parts.append(f"{label} {done}/{total} {_UNITS.get(kind, 'units')}{busy}")
    return " | ".join(parts)


def time_left(progress: Sequence[StageProgress], groups: Sequence[WorkerGroup]) -> float | None:
    """Seconds until the slowest group of workers is done (None before the first unit finished).

    Groups that validate others' jobs share every validation job: then the estimate is the larger of
    the slowest group's own other work and all the work left spread over all the workers."""
    rate = seconds_per_sample_nfe(progress)
    if rate is None:
        return None
    shared = all(g.validate_others for g in groups) and bool(groups)

    def own(g: WorkerGroup) -> float:
        mine = [p for p in progress if (g.nfes is None or p.nfe in g.nfes)]
        return seconds_left([p for p in mine if not (shared and p.stage == "validation")], rate) / g.workers

    slowest = max((own(g) for g in groups), default=0.0)
    if not shared:
        return slowest
    return max(slowest, seconds_left(progress, rate) / sum(g.workers for g in groups))


def describe(progress: Sequence[StageProgress], groups: Sequence[WorkerGroup], elapsed: float) -> str:
    """The whole line for ``progress`` after ``elapsed`` seconds."""
    started = any(p.done or p.running for p in progress)
    if not started:
        return f"{clock(elapsed):>6}  workers starting: loading the model and building the objectives"
    left = time_left(progress, groups)
    estimate = "estimating time left" if left is None else f"~{clock(left)} left"
    return f"{clock(elapsed):>6}  {stage_counts(progress)} | {estimate}"


class ProgressLine:
    """A line redrawn in place on a terminal; elsewhere printed again only when its counts change."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self._last_key = ""
        self._width = 0

    def show(self, text: str, *, key: str | None = None) -> None:
        """Show ``text``; off a terminal only when ``key`` (default: the text) differs from the last."""
        if self.tty:
            self.stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
            self.stream.flush()
            return
        key = text if key is None else key
        if key != self._last_key:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last_key = key

    def close(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
