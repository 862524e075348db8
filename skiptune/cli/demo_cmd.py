"""``skiptune demo``: the whole service on the embedded default (SQLite + the bundled demo model).

Creates one study per NFE for the bundled Fashion-MNIST model, runs local worker processes that
cooperate through the SQLite file (one line of progress over every stage: search, validation, growth),
then prints the validated table, where the database and the report PNGs are, and how to query them.
CPU only, nothing to download. With the default one worker per NFE and a ``--seed``, a run is
reproducible: the same command gives the same trials and the same table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from skiptune.cli.common import parse_int_list, storage_url
from skiptune.cli.progress_line import WorkerGroup
from skiptune.errors import SkiptuneError
from skiptune.storage.url import normalize_url

HELP = "run the whole service on the bundled demo model (SQLite, local workers, CPU)"
DESCRIPTION = """Create Heun studies for the bundled Fashion-MNIST model, run local workers on them
(search, then validation of the best candidates on held-out seeds), print the validated coefficients
vs the baseline, and write the report PNGs.

Reproducible: the studies record --seed and each worker seeds its sampler from it. With at most one
worker per NFE (the default: one each) every study has one worker, so the same command gives the
same trials and the same table (a worker done with its own NFEs helps with the others' validation
jobs, `worker --validate-others`: a job's result does not depend on who runs it). With more workers
than NFEs they share the studies: each trial's value for its pair is still fixed (common seeds), but
which pairs are proposed depends on timing.

examples:
  skiptune demo                                   # the defaults used by `make demo`
  skiptune demo --seed 1 --out demo-seed1         # another seed: other proposals, maybe another answer
  skiptune demo --nfe 5,9,13 --trials 12 --out my-demo
  skiptune demo --nfe 5 --n-samples 64 --rungs 32,64 --trials 3 --validate-samples 64   # a smoke run
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--out", default="skiptune-demo", help="folder for database, logs, report (default: %(default)s)")
    add("--nfe", default="5,9", help="Heun NFEs to study (default: %(default)s)")
    add("--trials", type=int, default=8, help="trial budget per study (default: %(default)s)")
    add("--n-samples", type=int, default=200, help="samples per trial (default: %(default)s)")
    add("--rungs", default="200", help="pruning rungs in samples (default: %(default)s: no pruning; the "
        "Gaussian process learns nothing from a pruned trial and proposes its pair again)")  # fmt: skip
    add("--validate-samples", type=int, default=500,
        help="held-out samples per validated candidate (default: %(default)s)")  # fmt: skip
    add("--validate-top-k", type=int, default=1,
        help="candidates validated against the baseline (default: %(default)s)")  # fmt: skip
    add("--growth-trials", type=int, default=0,
        help="extra trials when the validated best presses against the box; 0: fixed box "
        "(default: %(default)s)")  # fmt: skip
    add("--search", default="gp", help="search algorithm (default: %(default)s: with 8 trials Gaussian-"
        "process search finds the NFE-9 valley, TPE mostly does not)")  # fmt: skip
    add("--seed", type=int, default=0, help="seed of the search, recorded with the studies (default: 0)")
    add("--workers", type=int, default=None,
        help="local worker processes (default: one per NFE, at most one per CPU core)")  # fmt: skip
    add("--batch-size", type=int, default=50, help="samples per batch (default: %(default)s)")
    add("--storage", default=None, metavar="URL", help="storage URL (default: sqlite:///OUT/skiptune.db)")
    add("--window-trials", type=int, default=0, metavar="W",
        help="window stage: sigma windows screened per validated pair (`study create --window-trials`); "
        "default %(default)s: off, to keep the demo's time")  # fmt: skip
    add("--refine-trials", type=int, default=0, metavar="T",
        help="refinement trials around the answer (`study create --refine-trials`); "
        "default %(default)s: off")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from skiptune.io import check_output_dir
    from skiptune.objectives.spec import check_rungs

    nfes = parse_int_list(args.nfe, what="NFE")
    workers = args.workers or max(1, min(len(nfes), _cores()))
    if workers < 1 or args.trials < 1:
        raise SkiptuneError(f"bad --workers {workers} / --trials {args.trials}: expected positive integers")
    if not 0 <= args.seed < 2**31 - 1024:
        raise SkiptuneError(f"bad --seed {args.seed}: expected an integer in 0..{2**31 - 1025}, e.g. 0")
    if args.n_samples < 2:
        raise SkiptuneError(f"bad --n-samples {args.n_samples}: expected an integer >= 2, e.g. 200")
    check_rungs(parse_int_list(args.rungs, what="rung"), args.n_samples)  # before anything runs
    given = normalize_url(storage_url(args)) if args.storage is not None else None
    out = check_output_dir(Path(args.out).resolve(), what="the demo folder (--out)")
    url = given or f"sqlite:///{out / 'skiptune.db'}"
    if given is None and (out / "skiptune.db").exists():
        print(f"{out / 'skiptune.db'} exists: its studies are reused (remove {out} to run again)")
    started = time.monotonic()
    print(f"[1/4] loading the model, creating the studies on {url} (seed {args.seed})", flush=True)
    _skiptune(
        "study", "create", "--model", "demo", "--sampler", "heun", "--nfe", args.nfe,
        "--extractor", "fmnist-classifier", "--reference", "demo", "--n-samples", str(args.n_samples),
        "--rungs", args.rungs, "--trials", str(args.trials), "--seed", str(args.seed),
        "--search", args.search, "--validate-samples", str(args.validate_samples),
        "--validate-top-k", str(args.validate_top_k), "--growth-trials", str(args.growth_trials),
        "--storage", url,
        "--refine-trials", str(args.refine_trials),
        *(["--window-trials", str(args.window_trials)] if args.window_trials > 0 else ["--no-window"]),
    )  # fmt: skip
    groups = worker_groups(nfes, workers)
    _run_workers(url, out, groups, batch_size=args.batch_size, seed=args.seed, started=started)
    print(f"[3/4] writing the report to {out / 'report'}", flush=True)
    _skiptune("report", "--model", "demo", "--out", str(out / "report"), "--storage", url, quiet=True)
    print("[4/4] results", flush=True)
    _skiptune("table", "--model", "demo", "--storage", url)
    seconds = time.monotonic() - started
    print(
        f"\ndone in {seconds / 60:.1f} min ({seconds:.0f} s). database: {url}\n"
        f"report PNGs: {out / 'report'}\n"
        f"query:  skiptune best --model demo --nfe {nfes[-1]} --storage {url} --json\n"
        f"sample: skiptune sample --model demo --nfe {nfes[-1]} --tuned --seeds 0-63 --out grid.png "
        f"--storage {url}\n"
        f"watch:  optuna-dashboard {url}",
        flush=True,
    )
    return 0


def _cores() -> int:
    """The cores this process may run on (``taskset`` and container limits count, not the host's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_groups(nfes: list[int], workers: int) -> list[WorkerGroup]:
    """One group per worker, splitting the NFEs between them (each study has one worker: reproducible);
    with more workers than NFEs, one group of all workers sharing every study."""
    if workers > len(nfes):
        return [WorkerGroup(None, workers)]
    return [WorkerGroup(frozenset(nfes[i::workers]), 1, validate_others=True) for i in range(workers)]


def _skiptune(*argv: str, quiet: bool = False) -> None:
    """Run one verb in a child process (the same commands a user would type)."""
    result = subprocess.run(
        [sys.executable, "-m", "skiptune", *argv],
        stdout=subprocess.DEVNULL if quiet else None,
        check=False,
    )
    if result.returncode != 0:
        raise SkiptuneError(
            f"`skiptune {argv[0]}` failed with exit code {result.returncode}; see its message above"
        )


def _worker_command(url: str, group: WorkerGroup, *, batch_size: int, seed: int) -> list[str]:
    # a 2 s heartbeat: a worker waiting for the other's trial or job polls at that pace (10 s by default),
    # so it takes the other's next validation job, or exits at the end, within seconds
    command = [sys.executable, "-m", "skiptune", "worker", "--model", "demo", "--device", "cpu",
               "--batch-size", str(batch_size), "--seed", str(seed), "--heartbeat", "2",
               "--storage", url]  # fmt: skip
    if group.nfes is not None:
        command += ["--nfe", ",".join(map(str, sorted(group.nfes)))]
    if group.validate_others:  # its own NFEs' search; any NFE's validation jobs once those are done
        command.append("--validate-others")
    return command


def _run_workers(
    url: str, out: Path, groups: list[WorkerGroup], *, batch_size: int, seed: int, started: float
) -> None:
    total = sum(g.workers for g in groups)
    # a thread per core (a thread count the user set wins): more threads than cores, as when two workers
    # run two threads each on two cores, make PyTorch's thread pools spin against each other
    threads = int(os.environ.get("OMP_NUM_THREADS") or max(1, _cores() // total))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    split = "NFEs " + " / ".join(",".join(map(str, sorted(g.nfes))) for g in groups if g.nfes)
    print(
        f"[2/4] {total} local worker(s) on the CPU, {threads} thread(s) each"
        f" ({split if groups[0].nfes is not None else 'sharing every study'}); logs: {out}/worker-*.log",
        flush=True,
    )
    commands = [
        _worker_command(url, g, batch_size=batch_size, seed=seed + i)
        for i, g in enumerate(g for g in groups for _ in range(g.workers))
    ]
    procs = []
    for i, command in enumerate(commands):
        log = open(out / f"worker-{i}.log", "w")  # noqa: SIM115  (closed when the process ends)
        procs.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        _watch(url, groups, lambda: any(p.poll() is None for p, _ in procs), started=started)
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.terminate()
            p.wait()
            log.close()
    failed = [i for i, (p, _) in enumerate(procs) if p.returncode != 0]
    if failed:
        raise SkiptuneError(f"worker(s) {failed} exited with an error; see {out}/worker-{failed[0]}.log")


def _watch(url: str, groups: list[WorkerGroup], alive: Callable[[], bool], *, started: float) -> None:
    """The progress line, redrawn until the workers have exited."""
    from skiptune.cli.progress_line import ProgressLine, clock, describe, stage_counts
    from skiptune.search.experiment.progress import progress_of
    from skiptune.storage import open_storage

    storage = open_storage(url, read_only=True)
    line = ProgressLine()
    period = 1.0 if line.tty else 2.0
    try:
        while alive():
            progress = progress_of(storage, model="demo")
            key = stage_counts(progress) if any(p.done or p.running for p in progress) else "starting"
            line.show(describe(progress, groups, time.monotonic() - started), key=key)
            time.sleep(period)
        counts = stage_counts(progress_of(storage, model="demo"))
        line.show(f"{clock(time.monotonic() - started):>6}  {counts} | workers done", key="end")
    finally:
        line.close()
