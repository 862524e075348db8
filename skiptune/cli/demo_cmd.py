"""``skiptune demo``: the whole service on the embedded default (SQLite + the bundled demo model).

Creates one study per NFE for the bundled Fashion-MNIST model, runs local worker processes that
cooperate through the SQLite file, then prints the best-vs-baseline table, where the database and
the report PNGs are, and how to query them. CPU only, nothing to download.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from skiptune.cli.common import parse_int_list, storage_url
from skiptune.errors import SkiptuneError
from skiptune.storage.url import normalize_url

HELP = "run the whole service on the bundled demo model (SQLite, local workers, CPU)"
DESCRIPTION = """Create Heun studies for the bundled Fashion-MNIST model, run local workers on them,
print the best coefficients vs the baseline, and write the report PNGs.

examples:
  skiptune demo                                   # the defaults used by `make demo`
  skiptune demo --nfe 5,9,13 --trials 12 --out my-demo
  skiptune demo --workers 1 --n-samples 256 --rungs 64,256 --trials 3   # a quick smoke run
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="skiptune-demo", help="folder for database, logs, report (default: %(default)s)"
    )
    parser.add_argument("--nfe", default="5,9", help="Heun NFEs to study (default: %(default)s)")
    parser.add_argument("--trials", type=int, default=8, help="trial budget per study (default: %(default)s)")
    parser.add_argument("--n-samples", type=int, default=500, help="samples per trial (default: %(default)s)")
    parser.add_argument("--rungs", default="125,500", help="pruning rungs in samples (default: %(default)s)")
    parser.add_argument(
        "--workers", type=int, default=2, help="local worker processes (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=125, help="samples per batch (default: %(default)s)"
    )
    parser.add_argument(
        "--storage", default=None, metavar="URL", help="storage URL (default: sqlite:///OUT/skiptune.db)"
    )
    parser.add_argument(
        "--window-trials", type=int, default=0, metavar="W",
        help="window stage: sigma windows screened per validated pair (`study create --window-trials`); "
        "default %(default)s: off, to keep the demo's time",
    )  # fmt: skip
    parser.add_argument(
        "--refine-trials", type=int, default=0, metavar="T",
        help="refinement trials around the answer (`study create --refine-trials`); default %(default)s: off",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    if args.workers < 1 or args.trials < 1:
        raise SkiptuneError(
            f"bad --workers {args.workers} / --trials {args.trials}: expected positive integers"
        )
    from skiptune.io import check_output_dir
    from skiptune.objectives.spec import check_rungs

    if args.n_samples < 2:
        raise SkiptuneError(f"bad --n-samples {args.n_samples}: expected an integer >= 2, e.g. 500")
    check_rungs(parse_int_list(args.rungs, what="rung"), args.n_samples)  # before anything runs
    nfes = parse_int_list(args.nfe, what="NFE")
    given = normalize_url(storage_url(args)) if args.storage is not None else None
    out = check_output_dir(Path(args.out).resolve(), what="the demo folder (--out)")
    url = given or f"sqlite:///{out / 'skiptune.db'}"
    started = time.monotonic()
    print(f"[1/4] creating studies on {url}", flush=True)
    _skiptune(
        "study", "create", "--model", "demo", "--sampler", "heun", "--nfe", args.nfe,
        "--extractor", "fmnist-classifier", "--reference", "demo", "--n-samples", str(args.n_samples),
        "--rungs", args.rungs, "--trials", str(args.trials), "--storage", url,
        "--refine-trials", str(args.refine_trials),
        *(["--window-trials", str(args.window_trials)] if args.window_trials > 0 else ["--no-window"]),
    )  # fmt: skip
    print(f"[2/4] running {args.workers} local worker(s) on the CPU (logs: {out}/worker-*.log)", flush=True)
    _run_workers(url, out, workers=args.workers, batch_size=args.batch_size, total=args.trials * len(nfes))
    print(f"[3/4] writing the report to {out / 'report'}", flush=True)
    _skiptune("report", "--model", "demo", "--out", str(out / "report"), "--storage", url, quiet=True)
    print("[4/4] results", flush=True)
    _skiptune("table", "--model", "demo", "--storage", url)
    minutes = (time.monotonic() - started) / 60
    print(
        f"\ndone in {minutes:.1f} min. database: {url}\nreport PNGs: {out / 'report'}\n"
        f"query:  skiptune best --model demo --nfe {nfes[-1]} --storage {url} --json\n"
        f"sample: skiptune sample --model demo --nfe {nfes[-1]} --tuned --seeds 0-63 --out grid.png "
        f"--storage {url}\n"
        f"watch:  optuna-dashboard {url}",
        flush=True,
    )
    return 0


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


def _run_workers(url: str, out: Path, *, workers: int, batch_size: int, total: int) -> None:
    from tqdm import tqdm

    from skiptune.search.query import summary_rows

    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "skiptune", "worker", "--model", "demo", "--device", "cpu",
               "--batch-size", str(batch_size), "--storage", url]  # fmt: skip
    procs = []
    for i in range(workers):
        log = open(out / f"worker-{i}.log", "w")  # noqa: SIM115  (closed when the process ends)
        procs.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        with tqdm(total=total, desc="trials", unit="trial") as bar:
            while any(p.poll() is None for p, _ in procs):
                time.sleep(2)
                done = sum(r["n_complete"] + r["n_pruned"] for r in summary_rows(url, "demo"))
                bar.update(max(0, min(done, total) - bar.n))
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.terminate()
            p.wait()
            log.close()
    failed = [i for i, (p, _) in enumerate(procs) if p.returncode != 0]
    if failed:
        raise SkiptuneError(f"worker(s) {failed} exited with an error; see {out}/worker-{failed[0]}.log")
