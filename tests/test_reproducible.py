"""Seeds: one worker with a seed repeats a whole experiment; several workers repeat each trial's value.

A real worker (tiny EDM net, TorchScript extractor, real Fréchet objective, validation and growth on)
runs the same studies in fresh databases: with the same ``study create --seed`` and ``worker --seed``
every trial (params, values, pruning), every validation job and the answer are identical; another seed
proposes other pairs. With two workers sharing a study the order of proposals is not fixed, but every
pair evaluated in both runs has the same value.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from storage_fixtures import plain_storage

from skiptune.cli import main as cli
from skiptune.search.algorithms import sampler_seed
from skiptune.search.experiment.state import param_key
from skiptune.search.query import summary_rows
from skiptune.search.study import find_studies
from skiptune.search.worker.loop import run_worker

if TYPE_CHECKING:
    from storage_fixtures import SearchAssets

pytest_plugins = ["storage_fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]
_TABLE_KEYS = ("nfe", "status", "rho_bottom", "rho_top", "value", "baseline_value", "gain", "gain_se")


def _run(assets: SearchAssets, folder: Path, *, study_seed: int, worker_seed: int) -> str:
    url = f"sqlite:///{folder / 'studies.db'}"
    args = assets.study_args(nfes="2,3", trials=6, storage=url, n_samples=24, rungs="8,24")
    assert cli([*args, "--seed", str(study_seed), "--validate-samples", "40", "--validate-top-k", "2"]) == 0
    run_worker(url, model=str(assets.model), device="cpu", batch_size=8, heartbeat=None, grace=None,
               seed=worker_seed)  # fmt: skip
    return url


def _record(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every trial of every study (search, validation, growth) in order: number, state, params, values."""
    with plain_storage(url) as storage:
        return {
            s.study_name.split("/", 3)[-1]: [
                (t.number, t.state.name, sorted(t.params.items()), t.value, sorted(t.intermediate_values.items()))  # noqa: E501
                for t in storage.get_all_trials(s._study_id)
            ]
            for s in storage.get_all_studies()
        }


def _table(url: str) -> list[tuple[Any, ...]]:
    return [tuple(r[k] for k in _TABLE_KEYS) for r in summary_rows(url)]


def test_one_worker_with_a_seed_repeats_everything(search_assets: SearchAssets, tmp_path: Path) -> None:
    runs = []
    for name, study_seed in (("a", 5), ("b", 5), ("c", 6)):
        (tmp_path / name).mkdir()
        runs.append(_run(search_assets, tmp_path / name, study_seed=study_seed, worker_seed=0))
    a, b, c = (_record(url) for url in runs)
    assert a == b and _table(runs[0]) == _table(runs[1])
    assert any("validate" in name for name in a)  # the validation stage ran and is part of what repeats
    assert all(r[1] in ("validated", "no-gain") for r in _table(runs[0]))
    # Another study seed: the baseline is the same, the proposals are not.
    proposed = {name: [p for _, _, p, _, _ in trials[1:]] for name, trials in a.items() if "/" not in name}
    other = {name: [p for _, _, p, _, _ in trials[1:]] for name, trials in c.items() if "/" not in name}
    assert proposed.keys() == other.keys() and all(proposed[k] != other[k] for k in proposed)


def test_the_recorded_seed_and_the_worker_seed_both_change_the_sampler() -> None:
    base = sampler_seed(study_seed=1, worker_seed=0, study_name="m/heun/nfe=9/abc")
    assert base == sampler_seed(study_seed=1, worker_seed=0, study_name="m/heun/nfe=9/abc")
    assert base != sampler_seed(study_seed=2, worker_seed=0, study_name="m/heun/nfe=9/abc")
    assert base != sampler_seed(study_seed=1, worker_seed=1, study_name="m/heun/nfe=9/abc")
    assert base != sampler_seed(study_seed=1, worker_seed=0, study_name="m/heun/nfe=9/abc/grow1")


def _worker(url: str, model: str, seed: int) -> None:
    run_worker(url, model=model, device="cpu", batch_size=8, heartbeat=None, grace=None, seed=seed)


def test_shared_studies_repeat_each_pairs_value(search_assets: SearchAssets, tmp_path: Path) -> None:
    """Two workers on one study: proposals depend on timing; a pair's value does not."""
    values: list[dict[tuple[float, ...], float]] = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        url = f"sqlite:///{tmp_path / name / 'studies.db'}"
        args = search_assets.study_args(nfes="2", trials=6, storage=url, n_samples=24, rungs="24")
        assert cli([*args, "--seed", "5", "--no-validate"]) == 0
        if name == "one":
            _worker(url, str(search_assets.model), 0)
        else:
            ctx = multiprocessing.get_context("spawn")
            procs = [ctx.Process(target=_worker, args=(url, str(search_assets.model), s)) for s in (0, 1)]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
            assert [p.exitcode for p in procs] == [0, 0]
        with plain_storage(url) as storage:
            (study,) = find_studies(storage)
            trials = storage.get_all_trials(study.study_id)
        values.append({param_key(t.params): t.value for t in trials if t.value is not None})
    common = values[0].keys() & values[1].keys()
    assert common  # at least the baseline, and worker 0's first proposal (same sampler seed)
    assert all(values[0][k] == values[1][k] for k in common)
