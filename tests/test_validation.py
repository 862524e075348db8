"""Held-out validation: the statistics, the decision rule, and the stage run by real workers.

Unit level: the jackknife standard error against its formula, the decision on constructed results
(significant, not significant, ties), blocks of seeds. Service level (tiny model, CPU workers): a study is
searched, then validated on held-out seeds by the workers themselves; a box grows when the validated best
presses against its side; an old study without validation says `unvalidated` until `skiptune validate`;
validation jobs run exactly once across 5 worker processes on PostgreSQL, one of them SIGKILLed mid-job.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from storage_fixtures import plain_storage

from skiptune.cli import main as cli
from skiptune.errors import SkiptuneError
from skiptune.objectives.holdout import BlockDistances, block_bounds
from skiptune.search import records as rec
from skiptune.search.experiment.state import load_experiment, pending_candidates
from skiptune.search.experiment.validation import NO_GAIN, VALIDATED, compare, decide
from skiptune.search.query import best_coefficients, summary_rows
from skiptune.search.settings import ValidationSettings
from skiptune.search.space import BASELINE_PARAMS
from skiptune.search.study import find_studies
from skiptune.search.worker.loop import run_worker
from skiptune.storage import open_storage

if TYPE_CHECKING:
    from storage_fixtures import SearchAssets

pytest_plugins = ["storage_fixtures"]
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def _result(value: float, loo: list[float], *, n: int = 100, seed_base: int = 7) -> BlockDistances:
    return BlockDistances(value=value, leave_one_out=tuple(loo), n_samples=n, seed_base=seed_base)


BASE = _result(10.0, [10.2, 9.8, 10.1, 9.9])


def test_jackknife_standard_error_follows_its_formula() -> None:
    cand = _result(9.0, [9.3, 8.7, 9.0, 9.0])
    c = compare({"rho_bottom": 0.8, "rho_top": 0.9}, cand, BASE)
    diffs = [b - x for b, x in zip(BASE.leave_one_out, cand.leave_one_out)]  # 0.9, 1.1, 1.1, 0.9
    mean = sum(diffs) / 4
    assert c.gain == pytest.approx(1.0)
    assert c.gain_se == pytest.approx(math.sqrt(3 / 4 * sum((d - mean) ** 2 for d in diffs)))
    assert c.relative_gain == pytest.approx(0.1) and c.z == pytest.approx(1.0 / c.gain_se)
    with pytest.raises(SkiptuneError, match="different seeds"):
        compare({}, _result(9.0, [9.0] * 4, seed_base=8), BASE)


def test_decision_significant_not_significant_and_ties() -> None:
    good = ({"rho_bottom": 0.7, "rho_top": 0.9}, _result(9.0, [9.2, 8.8, 9.1, 8.9]))  # gain 1, se 0
    noisy = ({"rho_bottom": 0.6, "rho_top": 0.8}, _result(9.5, [8.0, 11.0, 8.5, 10.5]))
    d = decide(BASELINE_PARAMS, BASE, [noisy, good], threshold=2.0)
    assert (d.status, d.params) == (VALIDATED, good[0]) and d.best.params == good[0]
    # the best held-out value is not significant: the answer is (1, 1), the candidate still reported
    d = decide(BASELINE_PARAMS, BASE, [noisy], threshold=2.0)
    assert (d.status, d.params, d.best.params) == (NO_GAIN, BASELINE_PARAMS, noisy[0])
    # worse than the baseline: never recommended, whatever the threshold
    worse = ({"rho_bottom": 1.1, "rho_top": 1.1}, _result(10.5, [10.7, 10.3, 10.6, 10.4]))
    assert decide(BASELINE_PARAMS, BASE, [worse], threshold=1e-9).status == NO_GAIN
    # ties on the held-out value: the larger z, then the pair nearer (1, 1)
    twin = ({"rho_bottom": 0.5, "rho_top": 0.5}, good[1])
    near = ({"rho_bottom": 0.95, "rho_top": 0.95}, good[1])
    assert decide(BASELINE_PARAMS, BASE, [twin, near], threshold=2.0).params == near[0]
    sharper = ({"rho_bottom": 0.5, "rho_top": 0.5}, _result(9.0, [9.2, 8.8, 9.2, 8.8]))
    assert decide(BASELINE_PARAMS, BASE, [noisy, sharper], threshold=2.0).params == sharper[0]
    with pytest.raises(SkiptuneError, match="no validated candidate"):
        decide(BASELINE_PARAMS, BASE, [], threshold=2.0)


def test_blocks_and_settings_are_checked() -> None:
    assert block_bounds(10, 3) == [(0, 3), (3, 7), (7, 10)]
    with pytest.raises(SkiptuneError, match="at least 2 blocks"):
        block_bounds(5, 3)
    s = ValidationSettings.default_for(search_samples=100, search_seed_base=0, n_trials=30)
    assert (s.n_samples, s.seed_base, s.growth_budget, s.top_k) == (200, 1_000_000_000, 10, 3)
    with pytest.raises(SkiptuneError, match="overlap the search's seeds"):
        ValidationSettings(n_samples=100, seed_base=50).check_disjoint(0, 100)
    with pytest.raises(SkiptuneError, match="top-k 0"):
        ValidationSettings(n_samples=100, seed_base=500, top_k=0)
    ValidationSettings(n_samples=100, seed_base=2**32 - 100)  # the last seed is 2^32 - 1: fine
    with pytest.raises(SkiptuneError, match=r"must lie in 0\.\.4294967295"):
        ValidationSettings(n_samples=100, seed_base=2**32 - 99)


def test_block_distances_equal_direct_computation(search_assets: SearchAssets) -> None:
    from skiptune.nets.checkpoints import load_checkpoint
    from skiptune.objectives.features import create_extractor
    from skiptune.objectives.fid import FDObjective
    from skiptune.objectives.frechet import FeatureStats
    from skiptune.objectives.reference import load_reference
    from skiptune.objectives.spec import ObjectiveSpec
    from skiptune.sampling import generate_images
    from skiptune.skips import SkipSchedule, skip_tuning

    net = load_checkpoint(search_assets.model)
    ext = create_extractor(f"torchscript:{search_assets.extractor}")
    reference = load_reference(search_assets.reference)
    spec = ObjectiveSpec.describe(ext, reference, reference_name="r", n_samples=12)
    obj = FDObjective(spec=spec, denoiser=net, sampler="euler", nfe=2, extractor=ext, reference=reference,
                      batch_size=5)  # fmt: skip
    schedule = SkipSchedule(0.7, 0.9)
    got = obj.block_distances(schedule, seed_base=1000, n_samples=12, blocks=3)

    def direct(seeds: list[int]) -> float:
        stats = FeatureStats(ext.feature_dim)
        with skip_tuning(net, schedule):
            for batch in generate_images(
                net, sampler="euler", nfe=2, seeds=seeds, batch_size=7, device="cpu"
            ):
                stats.update(ext(batch))
        return obj._distance(stats)

    seeds = list(range(1000, 1012))
    assert got.value == pytest.approx(direct(seeds), rel=1e-9)
    for b, (lo, hi) in enumerate(block_bounds(12, 3)):
        # total minus block b in float64; 8 samples of 6 features make sqrtm sensitive: 1e-6 relative
        assert got.leave_one_out[b] == pytest.approx(direct(seeds[:lo] + seeds[hi:]), rel=1e-6)


# ------------------------------------------------------------------------------- the stage, for real


def _create(assets: SearchAssets, url: str, *extra: str, trials: int = 4, nfes: str = "2") -> None:
    args = assets.study_args(nfes=nfes, trials=trials, storage=url)
    assert (
        cli([*args, "--validate-samples", "24", "--validate-blocks", "4", "--validate-top-k", "2", *extra])
        == 0
    )


def _the_experiment(url: str):  # -> Experiment
    storage = open_storage(url)
    (study,) = find_studies(storage)
    return load_experiment(storage, study)


def test_workers_search_then_validate(search_assets: SearchAssets, tmp_path: Path, capsys: Any) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    _create(search_assets, url, "--growth-trials", "0", "--refine-trials", "0", "--no-window")
    summary = run_worker(
        url, model=str(search_assets.model), device="cpu", batch_size=8, heartbeat=1, grace=3
    )
    assert summary.count("complete") == 4 and summary.count("validated") == 3
    exp = _the_experiment(url)
    (round0,) = exp.rounds
    jobs = [t for t in round0.trials if t.state == TrialState.COMPLETE]
    assert len(jobs) == len(round0.trials) == 3  # the baseline + top 2, each exactly once
    assert {t.user_attrs[rec.ROLE_ATTR] for t in jobs} == {rec.BASELINE, rec.CANDIDATE}
    holdout = [t.user_attrs[rec.HOLDOUT_ATTR] for t in jobs]
    assert all(h["n_samples"] == 24 and len(h["leave_one_out"]) == 4 for h in holdout)
    assert {h["seed_base"] for h in holdout} == {1_000_000_000}
    best = best_coefficients(url, "tiny", 2, sampler="euler")
    assert best.status in (VALIDATED, NO_GAIN) and best.validated
    assert best.holdout_samples == 24 and best.gain is not None and best.gain_se is not None
    if best.status == NO_GAIN:
        assert (best.rho_bottom, best.rho_top) == (1.0, 1.0)
    else:
        assert best.gain > 2 * best.gain_se and best.holdout_value < best.holdout_baseline  # type: ignore[operator]
    (row,) = summary_rows(url)
    assert row["status"] == best.status and row["improvement_source"] == "held-out"
    query = ["--model", "tiny", "--nfe", "2", "--sampler", "euler", "--storage", url]
    capsys.readouterr()
    assert (
        cli(["best", "--model", "tiny", "--nfe", "2", "--sampler", "euler", "--storage", url, "--json"]) == 0
    )
    shown = json.loads(capsys.readouterr().out)
    for key in ("status", "validated", "gain", "gain_se", "holdout_samples", "holdout_value", "search_best"):
        assert key in shown
    assert cli(["best", *query]) == 0
    assert f"status         {best.status}" in capsys.readouterr().out


class _Bowl:
    """A known landscape with its minimum at (0.05, 0.05), outside the default box: noise-free values,
    held-out blocks with a small spread so the standard error is finite."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec

    @staticmethod
    def _value(schedule: Any) -> float:
        return 1.0 + (schedule.rho_bottom - 0.05) ** 2 + (schedule.rho_top - 0.05) ** 2

    def identity(self) -> dict[str, Any]:
        return dict(self.spec.objective_identity())

    def evaluate(self, schedule: Any) -> Iterator[tuple[int, float]]:
        yield 8, self._value(schedule) + 0.01
        yield 16, self._value(schedule)

    def block_distances(
        self, schedule: Any, *, seed_base: int, n_samples: int, blocks: int
    ) -> BlockDistances:
        v = self._value(schedule)
        return BlockDistances(v, tuple(v + 0.001 * (b % 2) for b in range(blocks)), n_samples, seed_base)


def test_box_grows_towards_an_edge_optimum(search_assets: SearchAssets, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    no_stages = ("--refine-trials", "0", "--no-window")
    _create(search_assets, url, "--growth-trials", "6", "--growth-edge", "0.3", *no_stages, trials=8)
    summary = run_worker(
        url, model=str(search_assets.model), device="cpu", heartbeat=1, grace=3,
        objective_factory=lambda net, spec, **_: _Bowl(spec),
    )  # fmt: skip
    exp = _the_experiment(url)
    assert [p.index for p in exp.phases][:2] == [0, 1]
    grown = exp.phases[1]
    assert grown.space.rho_bottom == (0.0, 1.2) and grown.space.rho_top == (0.0, 1.2)  # 0.2 - 0.5 -> 0
    assert grown.budget == 3 and sum(p.budget for p in exp.phases[1:]) <= 6
    priors = [t for t in grown.trials if t.user_attrs.get(rec.ROLE_ATTR) == rec.PRIOR]
    assert len(priors) == 8  # the main phase's finished trials, copied so TPE learns from them
    assert summary.count("complete") == sum(
        1 for p in exp.phases for t in p.trials if t.state == TrialState.COMPLETE and t not in priors
    )
    # validated again after the growth: every top-K candidate of all phases has a done job (a second
    # round only when the grown box produced a new top-K candidate; else the first round's results stand)
    assert pending_candidates(exp) == [] and all(r.done for r in exp.rounds)
    best = best_coefficients(url, "tiny", 2, sampler="euler")
    assert best.status == VALIDATED and best.box is not None
    assert best.box["rho_bottom"][0] == 0.0
    # every validated job's params were evaluated once, whichever round asked for them
    keys = [
        tuple(sorted(t.params.items()))
        for r in exp.rounds
        for t in r.trials
        if t.state == TrialState.COMPLETE
    ]
    assert len(keys) == len(set(keys))


def test_old_study_is_unvalidated_until_validate(
    search_assets: SearchAssets, tmp_path: Path, capsys: Any
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    _create(search_assets, url, "--no-validate", trials=3)
    run_worker(url, model=str(search_assets.model), device="cpu", batch_size=8, heartbeat=1, grace=3)
    best = best_coefficients(url, "tiny", 2, sampler="euler")
    assert (best.status, best.validated, best.gain) == ("unvalidated", False, None)
    (row,) = summary_rows(url)
    assert row["improvement_source"] == "search (unvalidated)"
    base = ["--model", "tiny", "--nfe", "2", "--sampler", "euler", "--storage", url]
    capsys.readouterr()
    assert cli(["validate", *base, "--validate-samples", "24", "--validate-blocks", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "validating" and len(out["enqueued"]) == 3  # the baseline + the 2 others
    assert best_coefficients(url, "tiny", 2, sampler="euler").status == "validating"
    # settings are fixed once a round exists: held-out results must pair on the same seeds
    assert cli(["validate", *base, "--validate-samples", "40", "--validate-blocks", "4"]) == 2
    assert "fixed" in capsys.readouterr().err
    run_worker(url, model=str(search_assets.model), device="cpu", batch_size=8, heartbeat=1, grace=3)
    assert best_coefficients(url, "tiny", 2, sampler="euler").status in (VALIDATED, NO_GAIN)


FIXED_BOX = ("--growth-trials", "0", "--refine-trials", "0", "--no-window")


def _nfe(url: str, nfe: int):  # -> Experiment
    storage = open_storage(url)
    (study,) = find_studies(storage, nfes=[nfe])
    return load_experiment(storage, study)


def test_validate_others_runs_other_nfes_jobs_never_their_search(
    search_assets: SearchAssets, tmp_path: Path
) -> None:
    """A worker limited to NFE 2 with ``validate_others`` runs NFE 3's validation jobs once NFE 3's search
    is done, never NFE 3's search trials, and does not wait for a search nobody runs; without the option
    NFE 3 is none of its business."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    _create(search_assets, url, *FIXED_BOX, "--seed", "0", nfes="2,3", trials=3)

    def work(nfe: int, heartbeat: int | None = None, grace: int | None = None, **kw: Any) -> Any:
        return run_worker(url, model=str(search_assets.model), nfes=[nfe], device="cpu", batch_size=8,
                          heartbeat=heartbeat, grace=grace, **kw)  # fmt: skip

    # NFE 3 has no worker: after its own work this one waits --grace (3 s) for NFE 3 to move, then exits
    helper = work(2, heartbeat=1, grace=3, validate_others=True)
    assert helper.count("complete") + helper.count("pruned") == 3 and helper.count("validated") >= 2
    assert _nfe(url, 2).status() in (VALIDATED, NO_GAIN)
    assert [t.state for t in _nfe(url, 3).search_trials()] == [TrialState.WAITING]  # the baseline, untouched
    assert work(3, max_trials=3).evaluated == 3  # NFE 3 searched, stopped before its validation
    assert work(2).evaluated == 0  # without the option: NFE 2 is done, NFE 3's jobs are not its own
    assert _nfe(url, 3).rounds == []
    helper = work(2, validate_others=True)
    (round0,) = _nfe(url, 3).rounds
    assert [o.state for o in helper.outcomes] == ["validated"] * len(round0.trials)  # jobs only, no trial
    assert all(t.state == TrialState.COMPLETE for t in round0.trials) and len(round0.trials) >= 2
    assert len(_nfe(url, 3).search_trials()) == 3 and _nfe(url, 3).status() in (VALIDATED, NO_GAIN)


@pytest.mark.slow
def test_validate_others_waits_for_the_other_search(search_assets: SearchAssets, tmp_path: Path) -> None:
    """Worker processes: one done with NFE 2 waits for NFE 3, whose own worker starts only then, and exits
    when NFE 3 is validated too (it may take some of its jobs), having run no NFE 3 trial."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    _create(search_assets, url, *FIXED_BOX, nfes="2", trials=2)
    _create(search_assets, url, *FIXED_BOX, "--validate-samples", "480", nfes="3", trials=6)  # jobs of ~1 s
    helper = search_assets.worker(
        url, tmp_path / "nfe2.log", grace=60, extra=("--nfe", "2", "--validate-others")
    )
    owner = None
    try:
        deadline = time.monotonic() + 120
        while _nfe(url, 2).status() not in (VALIDATED, NO_GAIN) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert helper.poll() is None, (tmp_path / "nfe2.log").read_text()[-3000:]  # done with NFE 2, waiting
        owner = search_assets.worker(url, tmp_path / "nfe3.log", grace=60, extra=("--nfe", "3"))
        assert helper.wait(timeout=240) == 0, (tmp_path / "nfe2.log").read_text()[-3000:]
        three = _nfe(url, 3)  # as the helper left it
        assert owner.wait(timeout=240) == 0, (tmp_path / "nfe3.log").read_text()[-3000:]
    finally:
        for process in (helper, owner):
            if process is not None:
                process.kill()
    assert len(three.search_trials()) == 6 and three.status() in (VALIDATED, NO_GAIN)
    assert all(t.state == TrialState.COMPLETE for r in three.rounds for t in r.trials)
    log = (tmp_path / "nfe2.log").read_text()
    assert not re.search(r"nfe=3/\w+: (starting a search trial|trial \d+)", log)  # no NFE 3 search trial
    ran = [re.findall(r"nfe=3/\w+/validate0: validation job (\d+) validated", (tmp_path / f).read_text())
           for f in ("nfe2.log", "nfe3.log")]  # fmt: skip
    assert sorted(ran[0] + ran[1]) == [str(t.number) for t in three.rounds[0].trials]  # each job once


# ------------------------------------------------------------------------------- many processes


def _jobs(url: str) -> list[FrozenTrial]:
    with plain_storage(url) as storage:
        return [
            t
            for s in storage.get_all_studies()
            if "/validate" in s.study_name
            for t in storage.get_all_trials(s._study_id)
        ]


def _catch_in_job(victim: subprocess.Popen[bytes], url: str, timeout: float = 120) -> FrozenTrial:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert victim.poll() is None, "the victim exited before it could be killed"
        os.kill(victim.pid, signal.SIGSTOP)
        mine = [
            t for t in _jobs(url)
            if t.state == TrialState.RUNNING and str(t.user_attrs.get(rec.WORKER_ATTR, "::")).split(":")[1]
            == str(victim.pid)
        ]  # fmt: skip
        if mine:
            return mine[0]
        os.kill(victim.pid, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("never caught the victim inside a validation job")


@pytest.mark.slow
@pytest.mark.postgres
def test_jobs_run_exactly_once_across_five_workers(
    search_assets: SearchAssets, postgres_url: str, tmp_path: Path
) -> None:
    """The victim, then four survivors racing for the jobs (eight made the same races on a 2-core box, with
    three more start-ups of PyTorch)."""
    # a tiny search, then validation jobs long enough (200 samples, batch 1) to catch the victim in one
    args = search_assets.study_args(nfes="2,3", trials=3, storage=postgres_url)
    assert cli([*args, "--validate-samples", "200", "--validate-blocks", "4", "--growth-trials", "0"]) == 0
    victim = search_assets.worker(postgres_url, tmp_path / "victim.log", batch_size=1, grace=10)
    killed = _catch_in_job(victim, postgres_url)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    # grace 10 s: on a loaded 2-core machine a live worker can miss a few 1 s heartbeats
    workers = [search_assets.worker(postgres_url, tmp_path / f"w{i}.log", grace=10) for i in range(4)]
    for i, w in enumerate(workers):
        try:
            assert w.wait(timeout=240) == 0, (tmp_path / f"w{i}.log").read_text()[-3000:]
        except subprocess.TimeoutExpired:
            for other in workers:
                other.kill()
            pytest.fail((tmp_path / f"w{i}.log").read_text()[-3000:])
    jobs = _jobs(postgres_url)
    assert not [t for t in jobs if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    failed = [t for t in jobs if t.state == TrialState.FAIL]
    assert [t._trial_id for t in failed] == [killed._trial_id]  # the killed job, failed by the heartbeat
    storage = open_storage(postgres_url)
    for study in find_studies(storage):
        exp = load_experiment(storage, study)
        done = [t for r in exp.rounds for t in r.trials if t.state == TrialState.COMPLETE]
        params = [tuple(sorted(rec.fixed_params(t).items())) for t in done]
        assert len(params) == len(set(params)), study.name  # each candidate evaluated exactly once
        assert exp.status() in (VALIDATED, NO_GAIN)
        if any(t._trial_id == killed._trial_id for r in exp.rounds for t in r.trials):
            # the killed job was re-run by a survivor with the same params
            assert tuple(sorted(rec.fixed_params(killed).items())) in params


RESULTS_DB = Path(__file__).resolve().parents[1] / "docs" / "results" / "results.db"


def test_committed_results_answer_as_docs_results_says() -> None:
    """The answers of docs/results/results.db (a real GPU run) read back as docs/results.md reports them:
    validated pairs beat the baseline on held-out seeds; Heun NFE 19 is `no-gain` with (1, 1)."""
    url = f"sqlite:///file:{RESULTS_DB}?immutable=1&uri=true"  # reads only: no lock or journal file
    storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True, skip_table_creation=True)
    try:
        nfe5 = best_coefficients(storage, "demo", 5, "heun")
        nfe19 = best_coefficients(storage, "demo", 19, "heun")
    finally:
        storage.engine.dispose()
    assert nfe5.status == "validated"
    assert (round(nfe5.rho_bottom, 3), round(nfe5.rho_top, 3)) == (0.236, 0.398)
    assert nfe5.holdout_value is not None and nfe5.holdout_baseline is not None
    assert nfe5.holdout_value < nfe5.holdout_baseline and nfe5.holdout_samples == 20000
    assert nfe5.box is not None and nfe5.box["rho_bottom"] == [0.0, 1.2]  # grown from the default [0.2, 1.2]
    assert nfe19.status == "no-gain" and (nfe19.rho_bottom, nfe19.rho_top) == (1.0, 1.0)
    assert nfe19.gain is not None and nfe19.gain_se is not None and nfe19.gain < 2 * nfe19.gain_se
