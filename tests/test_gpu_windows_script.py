"""scripts/gpu_windows.sh end to end on its CPU smoke path (tiny sizes; CI never times anything)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpu_smoke_path_writes_the_tables(tmp_path: Path) -> None:
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHON": sys.executable,
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "OMP_NUM_THREADS": "2", "DEVICE": "cpu", "WORKER_DEVICES": "--device cpu", "STUDIES": "heun:5",
        "REPEATS": "1", "N_SAMPLES": "8", "RUNGS": "8", "TRIALS": "2", "VALIDATE_SAMPLES": "8",
        "STAGE_ARGS": "--validate-blocks 2 --window-trials 2", "UNSEEN": "8", "BLOCKS": "2", "BATCH": "8",
        "SEARCH_SECONDS": "150",
    }  # fmt: skip
    script = str(ROOT / "scripts" / "gpu_windows.sh")
    first = subprocess.run(
        ["bash", script, str(tmp_path / "first")], cwd=ROOT, env={**env, "CHECK": "0"},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "CHECK=0" in first.stdout and not (tmp_path / "first" / "windows.json").exists()
    # A second call goes on from the first one's database: no new studies, then the checks.
    resume = {**env, "RESUME": str(tmp_path / "first" / "windows.db")}
    done = subprocess.run(
        ["bash", script, str(tmp_path / "out")], cwd=ROOT, env=resume, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resuming" in done.stdout and "1 studies" in done.stdout
    result = json.loads((tmp_path / "out" / "windows.json").read_text())
    (group,) = result["groups"]
    assert (group["sampler"], group["nfe"], group["unseen_samples"]) == ("heun", 5, 8)
    (repeat,) = group["repeats"]
    assert repeat["samples"]["total"] >= 16 and "vs_best_answer" in repeat
    table = (tmp_path / "out" / "windows.md").read_text()
    assert table.startswith("| study | repeat |") and "| heun NFE 5 | 0 |" in table
    missing = subprocess.run(
        ["bash", script, str(tmp_path / "none")], cwd=ROOT, env={**env, "RESUME": str(tmp_path / "no.db")},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 2 and "no such database file" in missing.stderr
