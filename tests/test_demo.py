"""A shortened `skiptune demo` end to end: bundled model, SQLite, a real local worker, table and report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from skiptune.demo.bundled import DEMO_CLASSIFIER_PATH, DEMO_MODEL_PATH, DEMO_REFERENCE_PATH


@pytest.mark.slow
def test_short_demo_runs_end_to_end(tmp_path: Path) -> None:
    for asset in (DEMO_MODEL_PATH, DEMO_CLASSIFIER_PATH, DEMO_REFERENCE_PATH):
        assert asset.is_file(), f"bundled asset missing: {asset}"
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--nfe", "5", "--trials", "2", "--n-samples", "48",
            "--rungs", "16,48", "--workers", "1", "--batch-size", "16"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "skiptune", *argv], capture_output=True, text=True,
                          env=env, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[4/4] results" in done.stdout and "demo/heun/nfe=5" in done.stdout
    assert sorted(p.name for p in (out / "report").glob("*.png"))[0] == "distance_vs_nfe.png"

    url = f"sqlite:///{out / 'skiptune.db'}"
    query = [sys.executable, "-m", "skiptune", "best", "--model", "demo", "--nfe", "5"]
    query += ["--storage", url, "--json"]
    best = subprocess.run(query, capture_output=True, text=True, check=True)
    record = json.loads(best.stdout)
    # 2 search trials, plus 1 if the validated best pressed against the box and it grew (ceil(2/3))
    grown = record["box"]["rho_bottom"][0] < 0.2 or record["box"]["rho_top"][0] < 0.2
    assert record["n_trials"] == 2 + grown
    assert record["status"] in ("validated", "no-gain") and record["holdout_samples"] == 96
    assert record["baseline_value"] is not None and record["value"] <= record["baseline_value"]
