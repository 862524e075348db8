"""The search benchmark's stand-in (benchmarks/search_surrogate.py): landscapes fitted to the GPU runs'
trials, an objective with common random numbers, and one repeat of the real service on it."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "search_surrogate.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("search_surrogate", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["search_surrogate"] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def test_landscapes_from_the_recorded_trials(bench: ModuleType) -> None:
    rows = bench.log_ratios(bench.DEFAULT_DBS)
    assert set(bench.STUDIES) <= set(rows)
    heun35 = rows[("heun", 35)]
    at_one = heun35[(heun35[:, 0] == 1.0) & (heun35[:, 1] == 1.0)]
    assert len(at_one) >= 5 and np.allclose(at_one[:, 2], 0.0)  # each study's baseline against itself
    land = bench.Landscape.fit(heun35, 0.05)
    assert land(1.0, 1.0) == pytest.approx(0.0, abs=1e-12)
    _, rt, gain = land.best()
    assert gain == pytest.approx(0.05, abs=1e-3) and 0.95 <= rt <= 1.05  # the band near rho_top = 1
    assert land.scales[1] < land.scales[0]  # narrow in rho_top


def test_the_stand_in_has_common_random_numbers(bench: ModuleType) -> None:
    land = bench.Landscape.fit(bench.log_ratios(bench.DEFAULT_DBS)[("heun", 35)], 0.05)
    objective = SimpleNamespace(seed_base=0, n_samples=2000, rungs=(500, 2000))
    spec = SimpleNamespace(objective=objective)
    obj = bench.SurrogateObjective(spec, land, 0.009)
    base = SimpleNamespace(rho_bottom=1.0, rho_top=1.0, sigma_window=None)
    pair = SimpleNamespace(rho_bottom=0.85, rho_top=0.99, sigma_window=None)
    assert [v for _, v in obj.evaluate(base)] == [obj.base + bench.BIAS / 500, obj.base + bench.BIAS / 2000]
    assert list(obj.evaluate(pair)) == list(obj.evaluate(pair))  # the same seeds, the same value
    held = obj.block_distances(pair, seed_base=10**9, n_samples=8000, blocks=10)
    again = obj.block_distances(pair, seed_base=10**9, n_samples=8000, blocks=10)
    assert held == again and len(held.leave_one_out) == 10
    other = obj.block_distances(pair, seed_base=2 * 10**9, n_samples=8000, blocks=10)
    assert other.value != held.value  # other seeds, other noise
    assert math.log((held.value - bench.BIAS / 8000) / obj.base) == pytest.approx(land(0.85, 0.99), abs=0.05)


def test_one_repeat_of_the_service_answers_every_study(bench: ModuleType, tmp_path: Path) -> None:
    rows = bench.log_ratios(bench.DEFAULT_DBS)
    lands = {("heun", 9): bench.Landscape.fit(rows[("heun", 9)], 0.061)}
    job = (
        "t",
        ["--trials", "6", "--refine-trials", "2", "--validate-samples", "2000"],
        0,
        lands,
        str(tmp_path),
        False,
    )
    (row,) = bench.run_repeat(job)
    assert row["status"] in ("validated", "no-gain") and row["trials"] >= 6 + 2  # + any growth
    assert -1 < row["true_gain"] <= 0.061 + 1e-9 and row["found_gain"] >= row["true_gain"] - 1e-9
