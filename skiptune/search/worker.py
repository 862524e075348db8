"""The worker: load the model once, then evaluate trials of the studies that most need them.

Many workers (processes, GPUs, machines) share one storage. Each loop turn a worker fails the
stale trials of dead workers (Optuna's heartbeat; each is re-enqueued once, in the one process
that failed it), picks the study with the least used budget, and runs one trial. It stops when
every selected study has met its budget and no trial is left WAITING or RUNNING (it waits for
the RUNNING ones, so a trial whose worker dies is still re-run by a survivor).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from skiptune.devices import resolve_device
from skiptune.errors import SkiptuneError
from skiptune.search.algorithms import build_sampler
from skiptune.search.budget import fresh_trials, used_budget
from skiptune.search.heartbeat import heartbeat_interval
from skiptune.search.pruning import RungPruner
from skiptune.search.stopping import StopSignal
from skiptune.search.study import BUDGET_ATTR, StoredStudy, StudySpec, canonical, find_studies
from skiptune.search.trial_run import Objective, TrialOutcome, run_one_trial
from skiptune.storage import open_storage

_log = logging.getLogger(__name__)

#: A re-run of a dead worker's trial may die too (a setting that crashes the driver): give up after this.
MAX_RETRIES = 3

ObjectiveFactory = Callable[..., Objective]
"""``factory(net, spec, *, device, batch_size) -> Objective``."""


@dataclass
class WorkerSummary:
    worker_id: str
    outcomes: list[TrialOutcome] = field(default_factory=list)
    stopped: bool = False

    def count(self, state: str) -> int:
        return sum(o.state == state for o in self.outcomes)

    @property
    def evaluated(self) -> int:
        """Trials this worker evaluated (over-budget refusals are not evaluations)."""
        return sum(o.state != "over_budget" for o in self.outcomes)


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
) -> WorkerSummary:
    """Evaluate trials until the selected studies' budgets are met (or ``max_trials`` were run).

    ``precision="auto"`` runs the fast path on CUDA (bf16 + channels_last + torch.compile, see
    ``skiptune.nets.fast``) and plain fp32 elsewhere; ``"fp32"`` forces the plain network.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)  # one re-run per dead trial
    storage = open_storage(
        storage_url, heartbeat_interval=heartbeat, grace_period=grace, stale_trial_callback=retry
    )
    dev = resolve_device(device)
    from skiptune.nets.registry import load_model  # heavy import, after the cheap checks

    loaded = load_model(model, device=dev)
    net, precision_used = _fast_net(loaded.net, dev, precision)
    studies = _select_studies(storage, loaded.name, loaded.fingerprint, sampler, nfes)
    factory = objective_factory or default_objective_factory
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{worker_index}"
    seed = zlib.crc32(f"{worker_id}:{time.time_ns()}".encode()) & 0x7FFFFFFF
    loop = _Loop(storage, studies, worker_id=worker_id, seed=seed)
    objectives: dict[str, Objective] = {}

    def objective_for(s: StoredStudy) -> Objective:
        if s.name not in objectives:
            objectives[s.name] = _checked_objective(
                factory(net, s.spec, device=dev, batch_size=batch_size), s
            )
        return objectives[s.name]

    summary = WorkerSummary(worker_id)
    stop = StopSignal()
    stop.install()
    try:
        while not stop.requested and (max_trials is None or summary.evaluated < max_trials):
            target = loop.next_study(stop)
            if target is None:
                break
            outcome = run_one_trial(
                loop.study(target),
                storage,
                target.spec,
                objective_for(target),
                worker_id=worker_id,
                stop=stop,
                precision=precision_used,
            )
            _log.info("%s trial %d: %s %s", target.name, outcome.number, outcome.state, outcome.value or "")
            summary.outcomes.append(outcome)
    finally:
        stop.uninstall()
    summary.stopped = stop.requested
    return summary


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


def _checked_objective(objective: Objective, study: StoredStudy) -> Objective:
    mine = canonical(objective.identity())
    theirs = canonical(study.spec.objective)
    if mine != theirs:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise SkiptuneError(
            f"refusing to write into study {study.name!r}: this worker's objective differs in "
            f"{', '.join(diff)} (here: {[mine.get(k) for k in diff]}, "
            f"study: {[theirs.get(k) for k in diff]}); "
            "use the same reference file, extractor and settings as the study"
        )
    return objective


class _Loop:
    """Study choice and end-of-work detection over the selected studies."""

    def __init__(
        self, storage: optuna.storages.BaseStorage, studies: list[StoredStudy], *, worker_id: str, seed: int
    ) -> None:
        self.storage = storage
        self.studies = studies
        self.worker_id = worker_id
        self.seed = seed
        self._optuna: dict[str, optuna.Study] = {}
        interval = heartbeat_interval(storage)
        self.poll_s = float(max(1, min(interval, 10))) if interval else None

    def study(self, s: StoredStudy) -> optuna.Study:
        if s.name not in self._optuna:
            spec = s.spec
            self._optuna[s.name] = optuna.load_study(
                study_name=s.name,
                storage=self.storage,
                sampler=build_sampler(
                    spec.search, space=spec.space, n_trials=spec.n_trials, seed=self.seed + s.study_id
                ),
                pruner=RungPruner(
                    list(spec.objective_args.get("rungs") or [spec.objective_args["n_samples"]])
                ),
            )
        return self._optuna[s.name]

    def _with_current_budget(self, s: StoredStudy) -> StoredStudy:
        # `study create --trials N` may raise (or lower) the budget while workers run.
        budget = int(self.storage.get_study_user_attrs(s.study_id).get(BUDGET_ATTR, s.spec.n_trials))
        return s if budget == s.spec.n_trials else replace(s, spec=replace(s.spec, n_trials=budget))

    def next_study(self, stop: StopSignal) -> StoredStudy | None:
        """The study with the least used budget that needs a trial; waits while others' trials run."""
        while not stop.requested:
            needy: list[tuple[float, StoredStudy]] = []
            running = 0
            for s in map(self._with_current_budget, self.studies):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(self.study(s))
                trials = fresh_trials(self.storage, s.study_id)
                used = used_budget(trials)
                waiting = any(t.state == TrialState.WAITING for t in trials)
                running += sum(t.state == TrialState.RUNNING for t in trials)
                if used < s.spec.n_trials or waiting:
                    needy.append((used / s.spec.n_trials, s))
            if needy:
                return min(needy, key=lambda x: x[0])[1]
            if running == 0 or self.poll_s is None:
                return None
            time.sleep(self.poll_s)  # other workers' trials may still die and need a re-run
        return None


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
    run_worker(storage_url, **kwargs)


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
    from skiptune.search.objective import build_objective

    return build_objective(net, spec, device=device, batch_size=batch_size)
