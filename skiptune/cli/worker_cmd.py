"""``skiptune worker``: evaluate trials of a model's studies until their budgets are met."""

from __future__ import annotations

import argparse
import logging

from skiptune.cli.common import add_storage, model_help, parse_int_list, storage_url
from skiptune.errors import SkiptuneError
from skiptune.sampling import SAMPLERS
from skiptune.storage.open import require_existing_sqlite
from skiptune.storage.url import normalize_url

HELP = "run a worker (one process per GPU with --devices) on a model's studies"
DESCRIPTION = """Loads the model once, then repeatedly picks the study with the least used budget,
evaluates one trial (pruned early at the rungs when clearly worse) and records it. Any number of
workers on any number of machines may share one --storage. A killed worker's trial is failed after
--grace seconds without heartbeat and re-run by another worker. SIGINT/SIGTERM: the current trial
is given back (re-enqueued) and the worker exits 0. When the database goes away the worker retries
for up to --db-timeout seconds (its trial, if cut off, is given back), then exits 2 with one line.
Each unit of work is logged as it starts and ends (study, search trial or validation job, its place in
the budget, value, seconds, the worker's elapsed time), and each rung as it is reached.

Reproducible: a study's sampler is seeded from the study's seed (`study create --seed`) and --seed. One
worker with a --seed on its studies repeats its proposals, values and answer exactly; several workers
on one study each evaluate a given pair to the same value (common seeds), but which pairs get
proposed depends on the order they finish in.

--validate-others: a worker limited by --nfe (or --sampler) also runs the validation jobs of the model's
other studies (of its --sampler, if given) whenever it has none of its own left; their search trials stay
with their own workers, so a seeded run still repeats (a job's result does not depend on who runs it).
It then waits for those studies while their searches run, and exits when all are done; a search that
shows no progress for --grace seconds (no worker of its own) is not waited for.

examples:
  skiptune worker --model demo                               # all NFEs, auto device
  skiptune worker --model demo --nfe 5,9 --device cuda:1 --batch-size 512
  skiptune worker --model demo --seed 0        # alone on its studies: repeats the same trials
  skiptune worker --model demo --nfe 5 --validate-others --seed 0   # then helps validate NFE 9 etc.
  skiptune worker --model edm-cifar10 --devices 0,1,2,3 --storage postgresql://user:pw@db/skiptune
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help=model_help())
    parser.add_argument(
        "--sampler", default=None, choices=SAMPLERS.names(), help="only this sampler's studies (default: all)"
    )
    parser.add_argument("--nfe", default=None, help="only these NFEs, e.g. 5,9 (default: all)")
    parser.add_argument(
        "--validate-others",
        action="store_true",
        help="with no work of its own left, also run the validation jobs (never the search trials) of the "
        "model's other studies, and wait for them to finish (see above)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    where.add_argument("--devices", default=None, help="GPU indices, one worker process each, e.g. 0,1,2,3")
    parser.add_argument(
        "--batch-size", type=int, default=256, help="samples per batch (default: %(default)s)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="this worker's seed (process i of --devices: seed + i); with the study's recorded seed it "
        "seeds each study's sampler, so one worker repeats its proposals (default: from the clock)",
    )
    parser.add_argument(
        "--max-trials", type=int, default=None, help="stop after this many trials (per process)"
    )
    parser.add_argument(
        "--heartbeat", type=int, default=30, help="heartbeat interval, seconds (default: %(default)s)"
    )
    parser.add_argument(
        "--grace",
        type=int,
        default=120,
        help="seconds without heartbeat before a trial counts as dead (default: %(default)s)",
    )
    parser.add_argument(
        "--db-timeout",
        type=float,
        default=300.0,
        help="seconds to ride out an unreachable database before exiting 2 (default: %(default)s)",
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto: bf16 + channels_last + torch.compile on CUDA, fp32 on the CPU (default: %(default)s)",
    )
    add_storage(parser)


def _check(args: argparse.Namespace) -> None:
    for name in ("batch_size", "heartbeat", "grace"):
        if getattr(args, name) < 1:
            raise SkiptuneError(
                f"bad --{name.replace('_', '-')} {getattr(args, name)}: expected a positive integer"
            )
    if not args.db_timeout >= 0:  # also refuses nan
        raise SkiptuneError(f"bad --db-timeout {args.db_timeout}: expected seconds >= 0, e.g. 300")
    if args.seed is not None and not 0 <= args.seed < 2**31 - 1024:
        raise SkiptuneError(f"bad --seed {args.seed}: expected an integer in 0..{2**31 - 1025}, e.g. 0")
    if args.max_trials is not None and args.max_trials < 1:
        raise SkiptuneError(
            f"bad --max-trials {args.max_trials}: expected a positive integer (leave it out for no limit)"
        )
    if args.grace <= args.heartbeat:
        raise SkiptuneError(
            f"--grace {args.grace} must exceed --heartbeat {args.heartbeat} (a few missed beats), e.g. 4x"
        )


def run(args: argparse.Namespace) -> int:
    from skiptune.search.worker.loop import run_worker, run_worker_processes

    _check(args)
    url = normalize_url(storage_url(args))
    if url.startswith("sqlite"):
        require_existing_sqlite(url)  # a worker never creates studies: a missing file is a typo
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kwargs = dict(
        model=args.model,
        sampler=args.sampler,
        nfes=parse_int_list(args.nfe, what="NFE") if args.nfe else None,
        batch_size=args.batch_size,
        max_trials=args.max_trials,
        heartbeat=args.heartbeat,
        grace=args.grace,
        precision=args.precision,
        db_timeout=args.db_timeout,
        seed=args.seed,
        validate_others=args.validate_others,
    )
    if args.devices:
        from skiptune.devices import resolve_device

        devices = [f"cuda:{i}" for i in parse_int_list(args.devices, what="device")]
        for device in devices:  # here, once, rather than a traceback from every spawned process
            resolve_device(device)
        return run_worker_processes(url, devices=devices, **kwargs)  # type: ignore[arg-type]
    summary = run_worker(url, device=args.device, **kwargs)  # type: ignore[arg-type]
    print(
        f"worker {summary.worker_id}: {summary.count('complete')} complete, "
        f"{summary.count('pruned')} pruned, "
        f"{summary.count('failed')} failed, {summary.count('validated')} validation jobs"
        + (" (stopped by signal)" if summary.stopped else ""),
        flush=True,
    )
    if summary.exit_code():
        raise SkiptuneError(
            f"every trial this worker evaluated failed ({summary.count('failed')}); the reasons are in "
            "the log lines above and in each trial's skiptune_fail attribute: fix the setup, then rerun"
        )
    return 0
