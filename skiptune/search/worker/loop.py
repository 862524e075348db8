"""The worker: load the model once, then evaluate trials of the studies that most need them.

Many workers (processes, GPUs, machines) share one storage. Each loop turn a worker fails the
stale trials of dead workers (``stale.py``; each is re-run once, its copy keeping its budget
place), picks the study with the least used budget, and runs one trial. It stops when every
selected study has met its budget and no trial is left WAITING or RUNNING (it waits for the
RUNNING ones, so a trial whose worker dies is still re-run by a survivor).

Every turn passes one storage boundary (``resilience.StorageGuard``): choosing work is retried
through a database outage; a trial cut off by one is given back (re-enqueued) once the database
answers again; past ``db_timeout``, or on a permanent failure (disk full, read-only), the worker
stops with one line (``StorageUnavailable``, exit 2).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from skiptune.devices import resolve_device
from skiptune.errors import SkiptuneError
from skiptune.search.algorithms import build_sampler, sampler_seed
from skiptune.search.budget import counts_against_budget, fresh_trials, used_budget
from skiptune.search.experiment.state import (
    Experiment,
    advance,
    companion_ids,
    load_experiment,
    param_key,
)
from skiptune.search.lineage import MAX_RETRIES, Held
from skiptune.search.pruning import RungPruner
from skiptune.search.records import fixed_params, read_many, reset_session
from skiptune.search.settings import ValidationSettings
from skiptune.search.study import StoredStudy, StudySpec, canonical, find_studies
from skiptune.search.worker.heartbeat import heartbeat_interval
from skiptune.search.worker.precision import check_precision, recorded_precision
from skiptune.search.worker.resilience import DEFAULT_DB_TIMEOUT_S, StorageGuard
from skiptune.search.worker.stale import StaleSweep
from skiptune.search.worker.stopping import StopSignal
from skiptune.search.worker.trial_run import Objective, TrialOutcome, run_one_trial
from skiptune.search.worker.validation_run import run_validation_job
from skiptune.storage import open_storage
from skiptune.storage.failures import first_line

_log = logging.getLogger(__name__)

__all__ = ["MAX_RETRIES", "WorkerSummary", "run_worker", "run_worker_processes"]

ObjectiveFactory = Callable[..., Objective]
"""``factory(net, spec, *, device, batch_size) -> Objective``."""


@dataclass
class WorkerSummary:
    worker_id: str
    outcomes: list[TrialOutcome] = field(default_factory=list)
    stopped: bool = False

    def count(self, state: str) -> int:
        return sum(o.state == state for o in self.outcomes)

    def exit_code(self) -> int:
        """1 when every trial this worker evaluated failed (a broken setup, not bad luck), else 0."""
        failed = self.count("failed")
        return 1 if failed and failed == self.evaluated - self.count("released") else 0

    @property
    def evaluated(self) -> int:
        """Trials this worker evaluated (over-budget refusals are not evaluations)."""
        return sum(o.evaluated for o in self.outcomes)


def run_worker(
    storage_url: str,
    *,
    model: str,
    sampler: str | None = None,
    nfes: Sequence[int] | None = None,
    device: str = "auto",
    batch_size: int = 256,
    max_trials: int | None = None,
    heartbeat: int | None = 30,
    grace: int | None = 120,
    worker_index: int = 0,
    objective_factory: ObjectiveFactory | None = None,
    precision: str = "auto",
    db_timeout: float = DEFAULT_DB_TIMEOUT_S,
    seed: int | None = None,
    validate_others: bool = False,
) -> WorkerSummary:
    """Evaluate trials until the selected studies' budgets are met (or ``max_trials`` were run).

    ``precision="auto"`` runs the fast path on CUDA (bf16 + channels_last + torch.compile, see
    ``skiptune.nets.fast``) and plain fp32 elsewhere; ``"fp32"`` forces the plain network.
    ``db_timeout``: seconds to wait for an unreachable database (or gRPC proxy) before giving up,
    from the start on.
    ``seed``: this worker's seed (``seed + worker_index``; None: from the clock); with the study's
    recorded seed it seeds the sampler of each study, so one worker with a seed repeats its proposals.
    ``validate_others``: when this worker has no work of its own, it also runs the validation jobs of the
    model's other studies (of ``sampler``, if given; their search stays with their own workers), and waits
    for them while their searches progress (see ``_Loop``).
    """
    started = time.monotonic()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    guard = StorageGuard(db_timeout)
    # A worker started while its database (or proxy) is down waits for it as a running one does.
    storage = guard.call(
        lambda: open_storage(storage_url, heartbeat_interval=heartbeat, grace_period=grace, wait=False)
    )
    guard.reset = lambda: reset_session(storage)
    dev = resolve_device(device)
    from skiptune.nets.registry import load_model  # heavy import, after the cheap checks

    loaded = load_model(model, device=dev)
    net, precision_used = _fast_net(loaded.net, dev, precision)
    studies = guard.call(lambda: _select_studies(storage, loaded.name, loaded.fingerprint, sampler, nfes))
    others = [] if not validate_others else guard.call(
        lambda: _other_studies(storage, loaded.name, loaded.fingerprint, sampler, studies)
    )  # fmt: skip
    factory = objective_factory or default_objective_factory
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{worker_index}"
    seed = _worker_seed(worker_id, seed, worker_index)
    _log.info(
        "worker %s (seed %d): model %s loaded on %s (%s) after %.1f s; %d studies: %s%s", worker_id, seed,
        loaded.name, dev, precision_used, time.monotonic() - started, len(studies),
        ", ".join(s.name for s in studies),
        f"; validation jobs also of: {', '.join(s.name for s in others)}" if others else "",
    )  # fmt: skip
    loop = _Loop(
        storage, studies, worker_id=worker_id, seed=seed, guard=guard, others=others, precision=precision_used
    )
    objectives: dict[str, Objective] = {}

    def objective_for(s: StoredStudy) -> Objective:
        if s.name not in objectives:
            # one precision per study; the first worker's claim is a write: inside the storage boundary
            guard.call(lambda: check_precision(storage, s, precision_used))
            objectives[s.name] = _checked_objective(
                factory(net, s.spec, device=dev, batch_size=batch_size), s
            )
        return objectives[s.name]

    stop = StopSignal()
    stop.install()
    try:
        summary = _serve(
            loop, objective_for, guard, stop, precision_used, max_trials=max_trials, started=started
        )
    finally:
        stop.uninstall()
    summary.stopped = stop.requested
    return summary


def _worker_seed(worker_id: str, seed: int | None, worker_index: int) -> int:
    """``seed + worker_index``; without a seed, one from the worker's id and the clock."""
    if seed is None:
        return zlib.crc32(f"{worker_id}:{time.time_ns()}".encode()) & 0x7FFFFFFF
    return seed + worker_index


def _serve(
    loop: _Loop,
    objective_for: Callable[[StoredStudy], Objective],
    guard: StorageGuard,
    stop: StopSignal,
    precision: str,
    *,
    max_trials: int | None,
    started: float,
) -> WorkerSummary:
    """Run units until there are none left, ``max_trials`` were evaluated, or a stop was asked for."""
    summary = WorkerSummary(loop.worker_id)
    while not stop.requested and (max_trials is None or summary.evaluated < max_trials):
        unit = guard.call(lambda: loop.next_unit(stop), stopped=lambda: stop.requested)
        if unit is None:
            break
        objective = objective_for(unit.main)
        held = Held()
        unit_started = time.monotonic()
        _log.info("%s: %s", unit.study_name, unit.describe())
        try:
            outcome = _run_unit(loop, unit, objective, loop.worker_id, stop, precision, held)
        except Exception as exc:  # the boundary: storage failures become a give-back or one line
            if _is_device_failure(exc):
                raise _device_failure(exc, guard, held) from None
            outcome = _give_back_after(exc, guard, held, stop)
        if outcome is None:
            continue  # another worker took the last job first
        _log_outcome(unit, outcome, time.monotonic() - unit_started, time.monotonic() - started)
        summary.outcomes.append(outcome)
    return summary


def _log_outcome(unit: Unit, outcome: TrialOutcome, seconds: float, elapsed: float) -> None:
    what = "validation job" if unit.kind == "validate" else "trial"
    value = "" if outcome.value is None else f" {outcome.value:.6g}"
    _log.info(
        "%s: %s %d %s%s in %.1f s (worker elapsed %s)", unit.study_name, what, outcome.number,
        outcome.state, value, seconds, _clock(elapsed),
    )  # fmt: skip


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def _give_back_after(
    exc: Exception, guard: StorageGuard, held: Held, stop: StopSignal
) -> TrialOutcome | None:
    """After a storage failure mid-unit: wait for the database (or raise one line), give the trial back."""
    guard.ride_out(exc, stopped=lambda: stop.requested)
    state = guard.call(
        lambda: held.give_back("the database went away mid-trial"), stopped=lambda: stop.requested
    )
    return None if held.trial is None or state is None else TrialOutcome(held.trial.number, state)


_DEVICE_ERRORS = ("CUDA error", "CUDA driver", "cuDNN error", "CUBLAS_STATUS", "device-side assert")


def _is_device_failure(exc: Exception) -> bool:
    return isinstance(exc, RuntimeError) and any(w in str(exc) for w in _DEVICE_ERRORS)


def _device_failure(exc: Exception, guard: StorageGuard, held: Held) -> SkiptuneError:
    """The GPU failed outside what an evaluation may fail with (an Xid error, a lost device): its CUDA
    context is unusable, so the trial is given back (another worker re-runs it) and this one stops."""
    reason = first_line(exc)
    state = guard.call(lambda: held.give_back(f"device error: {reason}"))
    return SkiptuneError(
        f"the device failed ({reason}); its trial was {state or 'not yet taken'}; check the GPU "
        "(nvidia-smi, the kernel log), then start the worker again"
    )


def _run_unit(
    loop: _Loop,
    unit: Unit,
    objective: Objective,
    worker_id: str,
    stop: StopSignal,
    precision: str,
    held: Held,
) -> TrialOutcome | None:
    study = loop.study(unit)
    if unit.kind == "validate":
        assert unit.settings is not None
        return run_validation_job(
            study, unit.settings, objective,
            worker_id=worker_id, stop=stop, precision=precision, guard=loop.guard, held=held,
        )  # fmt: skip
    return run_one_trial(
        study, unit.spec, objective,
        worker_id=worker_id, stop=stop, precision=precision, guard=loop.guard, held=held,
        waiting=unit.waiting,
    )  # fmt: skip


def _select_studies(
    storage: optuna.storages.BaseStorage,
    model: str,
    fingerprint: str,
    sampler: str | None,
    nfes: Sequence[int] | None,
) -> list[StoredStudy]:
    found = find_studies(storage, model=model, sampler=sampler, nfes=nfes)
    ours = [s for s in found if s.spec.model_fingerprint == fingerprint]
    for s in found:
        if s not in ours:
            _log.warning(
                "skipping study %s: it was created for model fingerprint %s, this model is %s",
                s.name,
                s.spec.model_fingerprint[:12],
                fingerprint[:12],
            )
    if not ours:
        raise SkiptuneError(
            f"no study to work on for model {model!r} (fingerprint {fingerprint[:12]})"
            + (f", sampler {sampler!r}" if sampler else "")
            + (f", NFE {','.join(map(str, nfes))}" if nfes else "")
            + f" ({len(found)} found for other fingerprints); create them with `skiptune study create`"
        )
    return ours


def _other_studies(
    storage: optuna.storages.BaseStorage,
    model: str,
    fingerprint: str,
    sampler: str | None,
    ours: list[StoredStudy],
) -> list[StoredStudy]:
    """The studies of ``model`` (and ``sampler``) outside ``ours`` whose validation jobs a worker with
    ``validate_others`` also runs (those created for this model fingerprint)."""
    mine = {s.name for s in ours}
    found = find_studies(storage, model=model, sampler=sampler)
    return [s for s in found if s.spec.model_fingerprint == fingerprint and s.name not in mine]


def _checked_objective(objective: Objective, study: StoredStudy) -> Objective:
    mine = canonical(objective.identity())
    theirs = canonical(study.spec.objective_identity())
    if mine != theirs:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise SkiptuneError(
            f"refusing to write into study {study.name!r}: this worker's objective differs in "
            f"{', '.join(diff)} (here: {[mine.get(k) for k in diff]}, "
            f"study: {[theirs.get(k) for k in diff]}); "
            "use the same reference file, extractor and settings as the study"
        )
    return objective


@dataclass(frozen=True)
class Unit:
    """One piece of work: a search trial in a phase, or a job of a validation round."""

    kind: str  # "search" or "validate"
    main: StoredStudy  # the experiment's main study (identity, objective)
    study_name: str  # the Optuna study the trial lives in (main, grow phase or round)
    spec: StudySpec  # for search: the phase's space and budget
    settings: ValidationSettings | None = None
    waiting: bool = True  # the study held a WAITING trial when chosen (a re-run copy to take first)
    done: int = 0  # when chosen: search trials / jobs finished
    total: int = 0  # the phase's budget / the round's jobs
    stage: str = "search"  # for the log: search, or the companion's kind (grow, refine, window)

    def describe(self) -> str:
        """What the worker starts, for its log line: ``starting a search trial (3 of 8 finished)``."""
        what = "validation job" if self.kind == "validate" else f"{self.stage} trial"
        return f"starting a {what} ({self.done} of {self.total} finished)"


@dataclass
class _Work:
    """What a look at the experiments found: the units on offer and what is still running."""

    search: list[tuple[float, Unit]] = field(default_factory=list)  # with their used budget fraction
    validate: list[Unit] = field(default_factory=list)
    others: list[Unit] = field(default_factory=list)  # validation units of other studies (validate_others)
    running: int = 0  # trials running, companions being created, other studies' searches progressing

    def choose(self) -> Unit | None:
        """Validation jobs first (they turn finished searches into answers), then the search with the least
        used budget, then other studies' validation jobs."""
        if self.validate:
            return self.validate[0]
        if self.search:
            return min(self.search, key=lambda x: x[0])[1]
        return self.others[0] if self.others else None


class _Loop:
    """Work choice and end-of-work detection over the selected experiments.

    ``others`` (a worker's ``validate_others``): experiments of which this worker runs only the validation
    jobs, when it has no work of its own. Their search trials stay with their own workers (one seeded
    worker's order of proposals is what repeats a run); a job's result does not depend on who runs it.
    The worker waits for them while a trial of theirs runs or their search progressed within the grace
    period (a search nobody works on is not waited for longer), and skips one pinned to another precision.
    """

    def __init__(
        self,
        storage: optuna.storages.BaseStorage,
        studies: list[StoredStudy],
        *,
        worker_id: str,
        seed: int,
        guard: StorageGuard | None = None,
        others: list[StoredStudy] | None = None,
        precision: str = "fp32",
    ) -> None:
        self.storage = storage
        self.guard = guard
        self.studies = studies
        self.others = list(others or [])
        self.precision = precision
        self._progress: dict[str, tuple[tuple[int, int], float]] = {}  # other study -> (mark, since)
        self.worker_id = worker_id
        self.seed = seed
        self._optuna: dict[str, optuna.Study] = {}
        interval = heartbeat_interval(storage)
        self.poll_s = float(max(1, min(interval, 10))) if interval else None
        self.grace = float(getattr(storage, "grace_period", None) or 120)
        self.sweep = StaleSweep(grace=self.grace, guard=guard, every=interval) if interval else None
        self._rng = random.Random(seed)

    def study(self, unit: Unit) -> optuna.Study:
        if unit.study_name not in self._optuna:
            spec = unit.spec
            seed = sampler_seed(
                study_seed=unit.main.spec.seed, worker_seed=self.seed, study_name=unit.study_name
            )
            sampler: optuna.samplers.BaseSampler = (
                build_sampler(spec.search, space=spec.space, n_trials=spec.n_trials, seed=seed)
                if unit.kind == "search"
                else optuna.samplers.RandomSampler(seed=self.seed)  # jobs are enqueued: never sampled
            )
            pruner = RungPruner(spec.objective.rungs)
            self._optuna[unit.study_name] = optuna.load_study(
                study_name=unit.study_name, storage=self.storage, sampler=sampler, pruner=pruner
            )
        return self._optuna[unit.study_name]

    def _units(self, exp: Experiment) -> tuple[list[tuple[float, Unit]], list[Unit], int]:
        """(search units with their used fraction, validation units with waiting jobs, running trials)."""
        search, validate, running = [], [], 0
        main = exp.main
        for phase in [*exp.phases, *exp.windows]:  # a window screen: enqueued search-seed trials
            spec = replace(main.spec, space=phase.space, n_trials=phase.budget)
            unit = Unit("search", main, phase.name, spec)
            failed = self.sweep.sweep(self.study(unit)) if self.sweep else 0
            trials = fresh_trials(self.storage, phase.study_id) if failed else phase.trials
            used = used_budget(trials)
            waiting = any(t.state == TrialState.WAITING for t in trials)
            stage = "search" if phase.name == main.name else phase.kind
            unit = replace(unit, waiting=waiting, done=_finished(trials), total=phase.budget, stage=stage)
            running += sum(t.state == TrialState.RUNNING for t in trials)
            if used < phase.budget or waiting:
                search.append((used / phase.budget, unit))
        for r in exp.rounds:
            unit = Unit("validate", main, r.name, main.spec, exp.settings)
            failed = self.sweep.sweep(self.study(unit)) if self.sweep else 0
            trials = fresh_trials(self.storage, r.study_id) if failed else r.trials
            running += sum(t.state == TrialState.RUNNING for t in trials)
            if any(t.state == TrialState.WAITING for t in trials):
                jobs = len({param_key(fixed_params(t)) for t in trials})
                validate.append(replace(unit, done=_finished(trials), total=jobs))
        return search, validate, running + len(exp.unready)

    def next_unit(self, stop: StopSignal) -> Unit | None:
        """The next unit (``_Work.choose``); waits while others' trials run (they may die and need a
        re-run) or another study's search progresses."""
        while not stop.requested:
            work = self._look()
            unit = work.choose()
            if unit is not None:
                return unit
            if work.running == 0 or self.poll_s is None:
                return None
            time.sleep(self.poll_s * self._rng.uniform(0.5, 1.5))  # jitter: waiting workers spread out
        return None

    def _look(self) -> _Work:
        """Advance every experiment whose next step is due, then collect its units."""
        work = _Work()
        studies = [*self.studies, *self.others]
        listing = self.storage.get_all_studies()
        trials = read_many(self.storage, [i for s in studies for i in companion_ids(s, listing)])
        for s in studies:
            exp = load_experiment(self.storage, s, listing, trials)
            if advance(self.storage, exp, grace=self.grace):
                exp = load_experiment(self.storage, s)
            search, validate, running = self._units(exp)
            if s in self.studies:
                work.search += search
                work.validate += validate
                work.running += running
            elif self._may_validate(exp):
                work.others += validate
                work.running += running + int(bool(search) and self._progressing(exp))
        return work

    def _may_validate(self, exp: Experiment) -> bool:
        """Whether this worker may run the jobs of another study: not if it is pinned to another precision
        (then it is dropped, with one line)."""
        pinned = recorded_precision(exp.phases[0].trials)
        if pinned is None or pinned[1] == self.precision:
            return True
        _log.warning(
            "not validating %s: its trials run in %s, this worker's in %s",
            exp.main.name, pinned[1], self.precision,
        )  # fmt: skip
        self.others = [s for s in self.others if s.name != exp.main.name]
        return False

    def _progressing(self, exp: Experiment) -> bool:
        """Whether another study's unfinished search changed (a trial more, or one more finished) within the
        grace period, as this worker saw it."""
        trials = [t for p in [*exp.phases, *exp.windows] for t in p.trials]
        mark, now = (len(trials), _finished(trials)), time.monotonic()
        seen = self._progress.get(exp.main.name)
        if seen is None or seen[0] != mark:
            self._progress[exp.main.name] = (mark, now)
            return True
        return now - seen[1] <= self.grace


def _finished(trials: list[FrozenTrial]) -> int:
    """Trials that finished and count (complete, pruned, or failed by their own evaluation)."""
    return sum(t.state != TrialState.WAITING and t.state != TrialState.RUNNING and counts_against_budget(t)
               for t in trials)  # fmt: skip


def _fast_net(net: torch.nn.Module, device: torch.device, precision: str) -> tuple[torch.nn.Module, str]:
    """The network as the worker samples with it (the fast path on CUDA unless told otherwise), and
    the precision it runs in, recorded with every trial."""
    from skiptune.nets.fast import FP32, FastPath, default_fast_path, prepare_with

    if precision == "auto":
        settings = default_fast_path(device)
    else:  # FastPath validates the name
        settings = FP32 if precision == "fp32" else FastPath(precision=precision)  # type: ignore[arg-type]
    if settings.is_plain:
        return net, "fp32"
    _log.info("fast path on %s: %s (compiles on first use)", device, settings.to_dict())
    return prepare_with(net, settings), settings.precision


def _process_main(storage_url: str, kwargs: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = run_worker(storage_url, **kwargs)
    except SkiptuneError as exc:  # one line per process, not a traceback
        print(f"skiptune worker ({kwargs.get('device')}): error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    sys.exit(summary.exit_code())


def run_worker_processes(storage_url: str, *, devices: Sequence[str], **kwargs: Any) -> int:
    """One worker process per device (spawned: CUDA cannot be forked); returns 0 if all exit cleanly.

    SIGINT/SIGTERM reach the children too (same process group for Ctrl-C; forwarded for SIGTERM),
    and each releases its trial.
    """
    import multiprocessing
    import signal

    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(
            target=_process_main,
            args=(storage_url, {**kwargs, "device": d, "worker_index": i}),
            name=f"skiptune-worker-{d}",
        )
        for i, d in enumerate(devices)
    ]
    for p in procs:
        p.start()

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for p in procs:
            p.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    failed = [p.name for p in procs if p.exitcode != 0]
    if failed:
        _log.error("worker processes failed: %s", ", ".join(failed))
    return 1 if failed else 0


def default_objective_factory(
    net: Any, spec: StudySpec, *, device: torch.device, batch_size: int
) -> Objective:
    from skiptune.search.worker.objective import build_objective

    return build_objective(net, spec, device=device, batch_size=batch_size)
