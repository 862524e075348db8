"""`skiptune demo` end to end (bundled model, SQLite, real local workers, table and report), shortened;
its progress line; the same command twice gives the same table (the two runs go side by side: each is
mostly one process at a time, so on two cores they take about the time of one)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from skiptune.cli.progress_line import ProgressLine, WorkerGroup, describe, stage_counts, time_left
from skiptune.demo.bundled import DEMO_CLASSIFIER_PATH, DEMO_MODEL_PATH, DEMO_REFERENCE_PATH
from skiptune.search.experiment.progress import StageProgress, progress_of
from skiptune.storage import open_storage

SHORT = ["--nfe", "5", "--trials", "3", "--n-samples", "16", "--rungs", "8,16", "--validate-samples", "20",
         "--validate-top-k", "1", "--growth-trials", "1", "--batch-size", "8"]  # fmt: skip


def _demo(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the demo keeps a thread count the user set
    argv = [sys.executable, "-m", "skiptune", "demo", "--out", str(out), *SHORT, *extra]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _table(stdout: str) -> str:
    return stdout.split("[4/4] results", 1)[1].split("\ndone in", 1)[0]


@pytest.mark.slow
def test_short_demo_runs_end_to_end_and_repeats(tmp_path: Path) -> None:
    for asset in (DEMO_MODEL_PATH, DEMO_CLASSIFIER_PATH, DEMO_REFERENCE_PATH):
        assert asset.is_file(), f"bundled asset missing: {asset}"
    out = tmp_path / "demo"
    # The same command twice (fresh folders), at the same time: compared trial for trial at the end.
    with ThreadPoolExecutor(2) as pool:
        first, second = (pool.submit(_demo, folder, "--seed", "3") for folder in (out, tmp_path / "again"))
        done, again = first.result(), second.result()
    assert "[4/4] results" in done.stdout and "demo/heun/nfe=5" in done.stdout
    assert sorted(p.name for p in (out / "report").glob("*.png"))[0] == "distance_vs_nfe.png"
    # One progress display: printed (off a terminal) whenever a count changed, over both stages.
    lines = [ln for ln in done.stdout.splitlines() if re.match(r"\s+\d+:\d\d  ", ln)]
    assert "loading the model" in lines[0] and "workers done" in lines[-1]
    # The line is polled every 2 s, so a fast trial may pass unseen: some line mid-search shows both stages.
    assert any(re.search(r"search [0-2]/3 trials.* \| validation 0/2 jobs", ln) for ln in lines)
    assert any("left" in ln for ln in lines)
    assert re.search(r"search 3/3 trials \|.* validation (\d+)/\1 jobs \| workers done", lines[-1])
    # The worker's log says what it does: each unit with its study, place, value and time.
    log = (out / "worker-0.log").read_text()
    assert "(seed 3)" in log and "starting a search trial (0 of 3 finished)" in log
    assert re.search(r"validate0: validation job \d+ validated [\d.]+ in [\d.]+ s", log)

    url = f"sqlite:///{out / 'skiptune.db'}"
    progress = progress_of(open_storage(url, read_only=True), model="demo")
    assert (progress[0].stage, progress[0].done, progress[0].total) == ("search", 3, 3)
    assert "validation" in {p.stage for p in progress} and all(p.done == p.total for p in progress)
    query = [sys.executable, "-m", "skiptune", "best", "--model", "demo", "--nfe", "5"]
    best = subprocess.run([*query, "--storage", url, "--json"], capture_output=True, text=True, check=True)
    record = json.loads(best.stdout)
    # 3 search trials, plus 1 if the validated best pressed against the box and it grew (--growth-trials)
    grown = record["box"]["rho_bottom"] != [0.2, 1.2] or record["box"]["rho_top"] != [0.2, 1.2]
    assert record["n_trials"] == 3 + grown
    assert record["status"] in ("validated", "no-gain") and record["holdout_samples"] == 20

    # The same command again (the second run, fresh folder): the same table, trial for trial.
    assert _table(again.stdout) == _table(done.stdout)


def _stage(stage: str, done: int, total: int, **kw: float) -> StageProgress:
    values: dict[str, float] = dict(nfe=5, running=0, unit_samples=100, busy_s=0, samples_done=0, running_s=0)
    values.update(kw)
    return StageProgress(stage=stage, study="s", done=done, total=total, **values)  # type: ignore[arg-type]


def test_progress_line_counts_every_kind_of_stage_and_estimates_time_left() -> None:
    # 2 trials of 100 samples at NFE 5 took 10 s: 0.01 s per sample-NFE.
    search = _stage("search", 2, 4, busy_s=10.0, samples_done=200, running=1, running_s=2.0)
    nine = _stage("search", 0, 4, nfe=9)
    coming = _stage("validation", 0, 3, unit_samples=200)
    other = _stage("sharpen", 1, 2)  # a kind this module does not know: it still shows, counted
    assert stage_counts([search, nine, coming, other]) == (
        "search 2/8 trials (1 running) | validation 0/3 jobs | sharpen 1/2 units"
    )
    # Left: NFE 5 search 2 x 100 x 5 x 0.01 - 2 s running = 8 s, validation 3 x 200 x 5 x 0.01 = 30 s;
    # NFE 9 search 4 x 100 x 9 x 0.01 = 36 s. One worker per NFE: the slower one decides.
    split = [WorkerGroup(frozenset({5}), 1), WorkerGroup(frozenset({9}), 1)]
    assert time_left([search, nine, coming], split) == pytest.approx(38.0)
    assert time_left([search, nine, coming], [WorkerGroup(None, 2)]) == pytest.approx(37.0)
    # With --validate-others (the demo's per-NFE workers) both share the 30 s of validation: NFE 9's own
    # 36 s search decides while it is longer than all 74 s of work over 2 workers (37 s), else the spread.
    helping = [WorkerGroup(g.nfes, 1, validate_others=True) for g in split]
    assert time_left([search, nine, coming], helping) == pytest.approx(37.0)
    nine_late = _stage("search", 3, 4, nfe=9, busy_s=27.0, samples_done=300)  # the same 0.01 s rate
    assert time_left([search, nine_late, coming], helping) == pytest.approx(
        max(9.0, (8.0 + 9.0 + 30.0) / 2)
    )
    assert time_left([nine], split) is None  # nothing finished yet: no rate
    assert describe([nine], split, 7.0).startswith("  0:07  workers starting: loading the model")
    assert describe([search, nine, coming], split, 75.0).endswith("| ~0:38 left")


def test_progress_line_off_a_terminal_prints_only_changes() -> None:
    stream = io.StringIO()
    line = ProgressLine(stream)
    for text, key in (("0:01 a", "a"), ("0:02 a", "a"), ("0:03 b", "b")):
        line.show(text, key=key)
    line.close()
    assert stream.getvalue() == "0:01 a\n0:03 b\n"
