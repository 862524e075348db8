"""Workers for real: separate `skiptune worker` processes share one storage, one is SIGKILLed mid-trial.

Checks: every budget is met exactly; no trial is evaluated twice; the enqueued baseline and warm
start run exactly once; the killed worker's trial is failed by the heartbeat and re-run (same
params) by a survivor; no trial is left RUNNING or WAITING.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import pytest
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial
from storage_fixtures import plain_storage

from skiptune.cli import main as cli
from skiptune.errors import EvaluationError, SkiptuneError
from skiptune.objectives.reference import ReferenceStats, load_reference, save_reference
from skiptune.search.budget import FAIL_ATTR, counts_against_budget
from skiptune.search.space import BASELINE_PARAMS
from skiptune.search.study import ROLE_ATTR, find_studies
from skiptune.search.worker.loop import run_worker, run_worker_processes
from skiptune.search.worker.objective import build_objective
from skiptune.search.worker.trial_run import WORKER_ATTR
from skiptune.storage import open_storage

if TYPE_CHECKING:
    from storage_fixtures import SearchAssets

pytest_plugins = ["storage_fixtures"]  # storage_url, postgres_url, search_assets fixtures
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]
BUDGET = 10
WARM = {"rho_bottom": 0.7, "rho_top": 0.8}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
NO_LATER_STAGES = ("--refine-trials", "0", "--no-window")


def _create_studies(assets: SearchAssets, url: str) -> None:
    # A finished neighbour (NFE 4, same objective): its best pair is the warm start of NFEs 2 and 3.
    assert cli(assets.study_args(nfes="4", trials=1, storage=url)) == 0
    storage = open_storage(url)
    (neighbour,) = find_studies(storage, nfes=[4])
    dists: dict[str, BaseDistribution] = {name: FloatDistribution(0.5, 1.2) for name in WARM}
    optuna.load_study(study_name=neighbour.name, storage=storage).add_trial(
        create_trial(params=WARM, distributions=dists, value=0.01)
    )
    # the later stages (refinement, windows) have their own tests (test_window.py): this one is about trials
    assert cli([*assets.study_args(nfes="2,3", trials=BUDGET, storage=url), *NO_LATER_STAGES]) == 0


def _trials(url: str) -> dict[int, list[FrozenTrial]]:
    # A plain Optuna storage: its reads never wait for a write lock held by a stopped worker.
    with plain_storage(url) as storage:
        return {s.spec.nfe: storage.get_all_trials(s.study_id) for s in find_studies(storage, nfes=[2, 3])}


def _pid_of(trial: FrozenTrial) -> str:
    return str(trial.user_attrs.get(WORKER_ATTR, "::")).split(":")[1]  # "host:pid:index"


def _kill_mid_trial(victim: subprocess.Popen[bytes], url: str) -> FrozenTrial:
    trial = _catch_mid_trial(victim, url)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    return trial


def _catch_mid_trial(victim: subprocess.Popen[bytes], url: str, *, timeout: float = 90) -> FrozenTrial:
    """Freeze (SIGSTOP) the worker until it is caught with a RUNNING trial it claimed; it stays frozen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert victim.poll() is None, "the victim worker exited before it could be killed"
        os.kill(victim.pid, signal.SIGSTOP)
        mine = [
            t for trials in _trials(url).values() for t in trials
            if t.state == TrialState.RUNNING and _pid_of(t) == str(victim.pid)
        ]  # fmt: skip
        if mine:
            return mine[0]
        os.kill(victim.pid, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("never caught the victim worker inside a trial")


def _cooperate(assets: SearchAssets, url: str, n_workers: int, tmp_path: Path) -> None:
    _create_studies(assets, url)
    # batch size 1 makes the victim's trials long enough to catch it inside one
    victim = assets.worker(url, tmp_path / "victim.log", batch_size=1)
    killed = _kill_mid_trial(victim, url)
    workers = [assets.worker(url, tmp_path / f"worker{i}.log") for i in range(n_workers - 1)]
    for i, w in enumerate(workers):
        try:
            rc = w.wait(timeout=150)
        except subprocess.TimeoutExpired:
            for other in workers:
                other.kill()
            log = (tmp_path / f"worker{i}.log").read_text()[-3000:]
            pytest.fail(f"worker {i} did not finish; log:\n{log}")
        assert rc == 0, (tmp_path / f"worker{i}.log").read_text()[-3000:]
    _check(_trials(url), killed, victim.pid)


def _check(studies: dict[int, list[FrozenTrial]], killed: FrozenTrial, victim_pid: int) -> None:
    assert sorted(studies) == [2, 3]
    stale = []
    for nfe, trials in studies.items():
        states = [t.state for t in trials]
        assert TrialState.RUNNING not in states and TrialState.WAITING not in states, (nfe, states)
        finished = [t for t in trials if t.state in FINISHED]
        assert len(finished) == BUDGET == sum(counts_against_budget(t) for t in trials), (nfe, states)
        # Every evaluation that began (claimed: worker attribute set) finished, except the killed one.
        started = [t for t in trials if WORKER_ATTR in t.user_attrs]
        assert {t.user_attrs.get("skiptune_precision") for t in started} == {"fp32"}  # CPU workers: plain net
        stale += [t for t in started if t.state == TrialState.FAIL and FAIL_ATTR not in t.user_attrs]
        assert len(started) == len(finished) + (nfe == nfe_of(killed, studies))
        baseline = [t for t in finished if t.user_attrs.get(ROLE_ATTR) == "baseline"]
        assert [(t.state, t.params) for t in baseline] == [(TrialState.COMPLETE, BASELINE_PARAMS)]
        warm = [t for t in finished if t.user_attrs.get(ROLE_ATTR) == "warm_start"]
        assert [t.params for t in warm] == [WARM]
    # The killed trial: failed by the heartbeat, re-run once by a survivor with the same params.
    assert [(t.number, t.state) for t in stale] == [(killed.number, TrialState.FAIL)]
    trials = studies[nfe_of(killed, studies)]
    reruns = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(reruns) == 1 and reruns[0].state in FINISHED
    assert _pid_of(reruns[0]) != str(victim_pid)
    dead = next(t for t in trials if t.number == killed.number)
    # The victim may be caught between two suggest calls (params written one at a time): whatever
    # it had drawn, the re-run evaluates the same values.
    dead_params = dead.params.items()
    assert dead_params <= reruns[0].params.items(), (dead.params, reruns[0].params)


def nfe_of(trial: FrozenTrial, studies: dict[int, list[FrozenTrial]]) -> int:
    return next(nfe for nfe, trials in studies.items() if any(t._trial_id == trial._trial_id for t in trials))


@pytest.mark.postgres
def test_four_workers_on_postgres(search_assets: SearchAssets, postgres_url: str, tmp_path: Path) -> None:
    """The victim and three survivors racing for 2 x 10 trials (eight made the same races on a 2-core box,
    with four more start-ups of PyTorch)."""
    _cooperate(search_assets, postgres_url, 4, tmp_path)


def test_two_workers_on_sqlite(search_assets: SearchAssets, tmp_path: Path) -> None:
    _cooperate(search_assets, f"sqlite:///{tmp_path / 'studies.db'}", 2, tmp_path)


def test_sigterm_releases_the_trial_and_exits_zero(search_assets: SearchAssets, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    assert cli(search_assets.study_args(nfes="2,3", trials=BUDGET, storage=url)) == 0
    worker = search_assets.worker(url, tmp_path / "w.log", batch_size=1)
    caught = _catch_mid_trial(worker, url)
    os.kill(worker.pid, signal.SIGTERM)
    os.kill(worker.pid, signal.SIGCONT)
    assert worker.wait(timeout=60) == 0, (tmp_path / "w.log").read_text()[-3000:]
    trials = [t for ts in _trials(url).values() for t in ts]
    released = next(t for t in trials if t._trial_id == caught._trial_id)
    assert released.state == TrialState.FAIL and released.user_attrs[FAIL_ATTR]["kind"] == "released"
    again = [t for t in trials if t.user_attrs.get("skiptune_released_from") == released.number]
    assert [(t.state, t.params) for t in again] == [(TrialState.WAITING, {})]
    assert again[0].system_attrs["fixed_params"] == released.params  # the same point runs next
    assert again[0].user_attrs.get(ROLE_ATTR) == released.user_attrs.get(ROLE_ATTR)
    assert not any(t.state == TrialState.RUNNING for t in trials)
    assert "stopped by signal" in (tmp_path / "w.log").read_text()


def _factory_failing_first(calls: list[str]) -> Any:
    """The real objective, except that the first evaluation fails as NaN samples would."""

    def factory(net: Any, spec: Any, *, device: Any, batch_size: int) -> Any:
        objective = build_objective(net, spec, device=device, batch_size=batch_size)
        real = objective.evaluate

        def evaluate(schedule: Any) -> Any:
            calls.append(spec.name)
            if len(calls) == 1:
                raise EvaluationError("samples 3, 7 are NaN")
            return real(schedule)

        objective.evaluate = evaluate  # type: ignore[method-assign]
        return objective

    return factory


def test_failed_evaluation_is_recorded_and_the_worker_goes_on(
    search_assets: SearchAssets, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    # No validation stage: the stand-in objective evaluates search trials only.
    assert cli([*search_assets.study_args(nfes="2", trials=3, storage=url), "--no-validate"]) == 0
    calls: list[str] = []
    summary = run_worker(
        url, model=str(search_assets.model), device="cpu", batch_size=16, heartbeat=None, grace=None,
        objective_factory=_factory_failing_first(calls),
    )  # fmt: skip
    assert [o.state for o in summary.outcomes] == ["failed", "complete", "complete"] and len(calls) == 3
    (trials,) = _trials(url).values()
    failed = trials[0]
    assert failed.state == TrialState.FAIL and failed.user_attrs[FAIL_ATTR] == {
        "kind": "evaluation",
        "reason": "EvaluationError: samples 3, 7 are NaN",
    }
    assert failed.user_attrs[ROLE_ATTR] == "baseline"  # the first trial popped is the enqueued baseline
    assert sum(counts_against_budget(t) for t in trials) == 3  # a deterministic failure uses budget


def test_worker_refuses_other_reference_or_model(
    fresh_search_assets: SearchAssets, tiny_model_saver: Callable[..., Path], tmp_path: Path
) -> None:
    assets = fresh_search_assets
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    assert cli(assets.study_args(nfes="2", trials=2, storage=url)) == 0
    # Same model name ("tiny"), other weights: its studies are not this model's.
    other = tiny_model_saver(tmp_path / "other" / "tiny.pt", seed=4)
    with pytest.raises(
        SkiptuneError, match=r"no study to work on for model 'tiny'.*1 found for other fingerprints"
    ):
        run_worker(url, model=str(other), device="cpu")
    # Same file path, other statistics: refused before any trial.
    stats = load_reference(assets.reference)
    moved = ReferenceStats(mu=stats.mu + 0.5, sigma=stats.sigma, resolution=8, extractor=stats.extractor)
    save_reference(moved, assets.reference)
    with pytest.raises(SkiptuneError, match=r"refusing to work on study 'tiny/euler/nfe=2/.*sha256"):
        run_worker(url, model=str(assets.model), device="cpu", heartbeat=None, grace=None)
    (trials,) = _trials(url).values()
    assert [t.state for t in trials] == [TrialState.WAITING]  # untouched


def test_one_process_per_device(search_assets: SearchAssets, tmp_path: Path) -> None:
    """`--devices` spawns one worker per device; on this CPU-only machine both 'devices' are the CPU."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    assert cli(search_assets.study_args(nfes="2", trials=4, storage=url)) == 0
    rc = run_worker_processes(
        url, devices=["cpu", "cpu"], model=str(search_assets.model), batch_size=16, heartbeat=1, grace=3
    )
    assert rc == 0
    (trials,) = _trials(url).values()
    assert sum(t.state in FINISHED for t in trials) == 4 == sum(counts_against_budget(t) for t in trials)
    indices = {
        str(t.user_attrs[WORKER_ATTR]).rsplit(":", 1)[1] for t in trials if WORKER_ATTR in t.user_attrs
    }
    assert indices <= {"0", "1"} and indices
