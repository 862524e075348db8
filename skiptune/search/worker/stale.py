"""The stale sweep: every worker, before choosing work, fails and re-runs the trials of dead workers.

A RUNNING trial is stale when its last heartbeat is older than the grace period (database clock),
or when it never beat and this process has seen it so for longer than the grace period (a worker
that died between creating or taking a trial and its first beat; Optuna's own sweep skips those,
so they would stay RUNNING forever and the fleet would wait for them). Behind the gRPC proxy, which
carries no heartbeat table, a beat is a counter in a trial attribute (``storage/proxy_client.py``):
a trial is stale when this process has seen its counter unchanged for longer than the grace
period, measured on this process's monotonic clock only (no clock is compared with another).
Each stale trial is re-run through ``lineage.rerun_stale``: claim, copy, then fail, the copy keeping
the original's budget place.

Right after a database outage nobody could beat, so a worker sweeps only once the storage has
answered it for a whole grace period (``StorageGuard.quiet_for``): live workers beat again first.
"""

from __future__ import annotations

import time

import optuna

from skiptune.search import lineage
from skiptune.search import records as rec
from skiptune.search.worker.resilience import StorageGuard


class StaleSweep:
    def __init__(
        self, *, grace: float, guard: StorageGuard | None = None, every: float | None = None
    ) -> None:
        self.grace = grace
        self._guard = guard
        self._every = every or 0.0  # at most one sweep of a study per heartbeat interval
        self._last: dict[int, float] = {}  # study id -> when this process last swept it
        # trial id -> (its beat mark, when this process first saw that mark): "unchanged since"
        self._seen: dict[int, tuple[object, float]] = {}

    def sweep(self, study: optuna.Study) -> int:
        """Fail (and re-run) the stale RUNNING trials of ``study``; how many were failed here."""
        if self._guard is not None and not self._guard.quiet_for(self.grace):
            return 0
        storage = rec.study_storage(study)
        now = time.monotonic()
        if now - self._last.get(rec.study_id(study), -float("inf")) < self._every:
            return 0  # a trial turns stale only after the grace period: once per interval finds it in time
        self._last[rec.study_id(study)] = now
        failed = 0
        for tid, age, mark in rec.running_liveness(storage, rec.study_id(study)):
            if age is None:  # never beat (mark None), or a beat counter behind the proxy
                seen = self._seen.get(tid)
                if seen is None or seen[0] != mark:
                    seen = self._seen[tid] = (mark, now)
                stale = now - seen[1] > self.grace
            else:
                self._seen.pop(tid, None)
                stale = age > self.grace
            if stale:
                failed += lineage.rerun_stale(study, storage.get_trial(tid), grace=self.grace)
        return failed
