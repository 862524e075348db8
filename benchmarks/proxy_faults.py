"""A fleet behind ``skiptune proxy`` under faults: SIGKILLs, a frozen worker, a proxy restart, a DB outage.

N real worker loops (``run_worker``, the stand-in evaluation of ``service_scaling.py``: ``--duration``
seconds per trial) reach a fresh PostgreSQL database only through a ``skiptune proxy`` subprocess on
127.0.0.1. Once the fleet is busy: ``--kill`` workers are SIGKILLed inside a trial, one is SIGSTOPped
inside a trial (and woken once a sweep failed that trial), the proxy is stopped (SIGTERM) and started
again on the same port after ``--proxy-down`` seconds, and the database is stopped for ``--outage``
seconds (``--pg-stop`` / ``--pg-start``: shell commands; without them the outage is skipped).

Checks, written to ``--out``: nothing RUNNING or WAITING at the end; 0 lost (every trial failed by a
sweep or given back, with params, has a re-run copy; every victim's params finished); 0 duplicates (each
budget place finished once); every study's budget met exactly; every surviving worker exited 0; the
frozen worker dropped its trial; no traceback in any log.

    python benchmarks/proxy_faults.py --storage postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        --workers 64 --pg-stop "pg_ctl -D DATA -m fast -w stop" --pg-start "pg_ctl -D DATA ... start" \\
        --out faults.json
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service_scaling import (  # a script beside this one
    Database,
    ProxyProcess,
    RunConfig,
    StandIn,
    _create_studies,
    _machine,
    _preload,
)


def _fault_worker(index: int, url: str, args: argparse.Namespace, workdir: str) -> None:
    log = Path(workdir) / f"worker{index}.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import logging

    from skiptune.errors import SkiptuneError
    from skiptune.search.worker.loop import run_worker

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_worker(
            url, model="demo", device="cpu", batch_size=1, heartbeat=args.heartbeat, grace=args.grace,
            worker_index=index, db_timeout=args.db_timeout,
            objective_factory=lambda net, spec, **_: StandIn(spec, args.duration, 0.2),
        )  # fmt: skip
    except SkiptuneError as exc:
        print(f"error: {exc}", flush=True)
        os._exit(2)
    os._exit(0)


def _running(url: str) -> list[Any]:
    """RUNNING trials with a worker and both params drawn (something to re-run), read directly."""
    import optuna
    from optuna.trial import TrialState

    from skiptune.search import records as rec

    storage = optuna.storages.RDBStorage(url)
    try:
        return [
            t
            for s in storage.get_all_studies()
            for t in storage.get_all_trials(s._study_id, states=(TrialState.RUNNING,))
            if rec.WORKER_ATTR in t.user_attrs and len(rec.fixed_params(t)) == 2
        ]
    finally:
        storage.engine.dispose()


def _finished_count(url: str) -> int:
    import optuna
    from optuna.trial import TrialState

    storage = optuna.storages.RDBStorage(url)
    try:
        return sum(
            t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            for s in storage.get_all_studies()
            for t in storage.get_all_trials(s._study_id)
        )
    finally:
        storage.engine.dispose()


def _catch(url: str, procs: dict[int, Any], count: int, taken: set[int]) -> list[tuple[int, Any]]:
    """(pid, trial) of ``count`` workers caught inside a trial; each is SIGSTOPped when caught."""
    caught: list[tuple[int, Any]] = []
    deadline = time.monotonic() + 120
    while len(caught) < count and time.monotonic() < deadline:
        for t in _running(url):
            pid = int(str(t.user_attrs["skiptune_worker"]).split(":")[1])
            if pid in procs and pid not in taken and len(caught) < count:
                os.kill(pid, signal.SIGSTOP)
                if _still_running(url, t):
                    caught.append((pid, t))
                    taken.add(pid)
                else:
                    os.kill(pid, signal.SIGCONT)
        time.sleep(0.2)
    return caught


def _still_running(url: str, trial: Any) -> bool:
    return any(t._trial_id == trial._trial_id for t in _running(url))


def _state(url: str, trial: Any) -> str:
    import optuna

    storage = optuna.storages.RDBStorage(url)
    try:
        return storage.get_trial(trial._trial_id).state.name
    finally:
        storage.engine.dispose()


def _wait(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    trials = max(1, math.ceil(args.rounds * args.workers / args.studies))
    config = RunConfig(
        args.storage, args.workers, args.duration, trials, args.studies, args.heartbeat, args.grace,
        "fork", 600, str(workdir),
    )  # fmt: skip
    db = Database(args.storage, workdir)
    events: list[str] = []
    report: dict[str, Any] = {
        "workers": args.workers, "budget_per_study": trials, "studies": args.studies,
        "proxy_processes": args.proxy_processes, "outage_s": args.outage, "duration_s": args.duration,
    }  # fmt: skip
    t0 = time.monotonic()

    def note(what: str) -> None:
        events.append(f"{time.monotonic() - t0:7.1f} s  {what}")
        print(events[-1], flush=True)

    try:
        _create_studies(db.url, config)
        proxy = ProxyProcess(db.url, workdir, threads=args.proxy_threads, processes=args.proxy_processes)
        proxy.start()
        ctx = multiprocessing.get_context("fork")
        procs = {}
        for i in range(args.workers):
            p = ctx.Process(target=_fault_worker, args=(i, proxy.url, args, str(workdir)))
            p.start()
            procs[p.pid] = p
        note(f"{args.workers} workers started behind {proxy.url}")
        _wait(lambda: _finished_count(db.url) >= args.workers // 2, 300)
        note(f"{_finished_count(db.url)} trials finished: faults begin")
        taken: set[int] = set()
        killed = _catch(db.url, procs, args.kill, taken)
        for pid, _t in killed:
            os.kill(pid, signal.SIGKILL)
        note(f"SIGKILLed {len(killed)} workers inside trials {[t.number for _, t in killed]}")
        frozen = _catch(db.url, procs, 1, taken)
        note(f"SIGSTOPped worker {frozen[0][0] if frozen else None} inside a trial")
        time.sleep(3)
        proxy.stop()
        note("proxy stopped (SIGTERM)")
        time.sleep(args.proxy_down)
        proxy.start()
        note("proxy started again on the same port")
        time.sleep(5)
        if args.pg_stop and args.pg_start:
            subprocess.run(args.pg_stop, shell=True, check=True, capture_output=True, timeout=60)
            note("database stopped")
            time.sleep(args.outage)
            subprocess.run(args.pg_start, shell=True, check=True, capture_output=True, timeout=60)
            note("database started again")
        swept = bool(frozen) and _wait(lambda: _state(db.url, frozen[0][1]) != "RUNNING", 300)
        note(f"frozen worker's trial is {_state(db.url, frozen[0][1]) if frozen else None}: waking it")
        for pid, _t in frozen:
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + args.timeout
        for p in procs.values():
            p.join(timeout=max(1.0, deadline - time.monotonic()))
        alive = [p.pid for p in procs.values() if p.is_alive()]
        for p in procs.values():
            if p.is_alive():
                p.kill()
        note(f"workers done ({len(alive)} still alive at the timeout)")
        proxy.stop()
        killed_pids = {pid for pid, _ in killed}
        codes = Counter(p.exitcode for pid, p in procs.items() if pid not in killed_pids)
        logs = {pid: (workdir / f"worker{i}.log").read_text(errors="replace") for i, pid in enumerate(procs)}
        report.update(
            events=events,
            killed=len(killed),
            frozen=len(frozen),
            frozen_trial_swept=swept,
            frozen_dropped_its_trial=bool(frozen) and "dropping it" in logs[frozen[0][0]],
            survivor_exit_codes={str(k): v for k, v in codes.items()},
            workers_alive_at_timeout=len(alive),
            tracebacks=sum("Traceback" in t for t in logs.values()) + ("Traceback" in proxy.log()),
            workers_that_waited_out_an_outage=sum("database unreachable" in t for t in logs.values()),
            wall_s=round(time.monotonic() - t0, 1),
        )
        report.update(_check(db.url, trials, [t for _, t in killed + frozen]))
        ok = (
            report["lost"] == 0 and report["duplicates"] == 0 and report["budget_exact"]
            and report["left_running_or_waiting"] == 0 and set(codes) == {0} and not alive
            and report["tracebacks"] == 0 and report["frozen_dropped_its_trial"]
        )  # fmt: skip
        report["ok"] = bool(ok)
    finally:
        db.close()
    return report


def _check(url: str, budget: int, victims: list[Any]) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    from skiptune.search import lineage
    from skiptune.search import records as rec
    from skiptune.search.budget import used_budget

    storage = optuna.storages.RDBStorage(url)
    finished_states = (TrialState.COMPLETE, TrialState.PRUNED)
    lost, duplicates, exact, left, reruns = 0, 0, True, 0, 0
    everything = []
    for s in storage.get_all_studies():
        trials = storage.get_all_trials(s._study_id)
        everything += trials
        finished = [t for t in trials if t.state in finished_states]
        places = [lineage.place(t) for t in finished]
        duplicates += len(places) - len(set(places))
        left += sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
        for t in trials:
            kind = (t.user_attrs.get(rec.FAIL_ATTR) or {}).get("kind")
            if t.state == TrialState.FAIL and kind in (None, rec.RELEASED) and rec.fixed_params(t):
                reruns += 1
                lost += not any(c.user_attrs.get(rec.RERUN_OF_ATTR) == t.number for c in trials)
        exact &= len(finished) == budget == used_budget(trials)
    victims_finished = sum(
        any(rec.fixed_params(t) == rec.fixed_params(v) and t.state in finished_states for t in everything)
        for v in victims
    )
    lost += len(victims) - victims_finished
    storage.engine.dispose()
    return {
        "lost": lost, "duplicates": duplicates, "budget_exact": exact, "left_running_or_waiting": left,
        "trials_rerun": reruns, "victims_rerun_and_finished": victims_finished,
    }  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--storage", required=True, help="PostgreSQL admin URL (a fresh database is made)")
    p.add_argument("--workers", type=int, default=64)
    p.add_argument("--duration", type=float, default=5.0, help="stand-in seconds per trial (+-20%%)")
    p.add_argument("--rounds", type=int, default=8, help="trials per worker")
    p.add_argument("--studies", type=int, default=4)
    p.add_argument("--kill", type=int, default=4, help="workers SIGKILLed inside a trial")
    p.add_argument("--heartbeat", type=int, default=2)
    p.add_argument("--grace", type=int, default=15)
    p.add_argument("--db-timeout", type=float, default=180.0)
    p.add_argument("--proxy-down", type=float, default=5.0, help="seconds the proxy stays stopped")
    p.add_argument("--proxy-threads", type=int, default=16)
    p.add_argument("--proxy-processes", type=int, default=1)
    p.add_argument("--outage", type=float, default=20.0, help="seconds the database stays stopped")
    p.add_argument("--pg-stop", default=None, help="shell command that stops the database server")
    p.add_argument("--pg-start", default=None, help="shell command that starts it again")
    p.add_argument("--timeout", type=float, default=400.0, help="seconds to wait for the workers to end")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _preload()
    with tempfile.TemporaryDirectory(prefix="skiptune-proxy-faults-") as workdir:
        report = run(args, Path(workdir))
    report["machine"] = _machine()
    print(json.dumps({k: v for k, v in report.items() if k != "events"}, indent=1), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
