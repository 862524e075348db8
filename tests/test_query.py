"""Queries on hand-made studies: best pair, baseline, counts, summary rows, the `best`/`table` verbs."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from test_study import make_spec

from skiptune.cli import main as cli
from skiptune.errors import SkiptuneError
from skiptune.search.budget import EVALUATION_FAILED, FAIL_ATTR
from skiptune.search.query import best_coefficients, summary_rows
from skiptune.search.study import ROLE_ATTR, create_studies, find_studies
from skiptune.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)
DISTS: dict[str, BaseDistribution] = {
    "rho_bottom": FloatDistribution(0.5, 1.2),
    "rho_top": FloatDistribution(0.5, 1.2),
}


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'q.db'}"


def _fill(url: str, nfe: int, rng: random.Random) -> list[tuple[float, float, float]]:
    """Baseline, random complete trials, a pruned and a failed trial with smaller values (ignored)."""
    storage = open_storage(url)
    if not find_studies(storage, nfes=[nfe]):
        create_studies(storage, [make_spec(nfe, n_trials=20)])
    study = optuna.load_study(study_name=make_spec(nfe).name, storage=storage)
    baseline = study.ask()  # the enqueued (1, 1)
    assert baseline.suggest_float("rho_bottom", 0.5, 1.2) == 1.0
    baseline.suggest_float("rho_top", 0.5, 1.2)
    study.tell(baseline, 5.0 + nfe)
    points = [(rng.uniform(0.5, 1.2), rng.uniform(0.5, 1.2), rng.uniform(1.0, 4.0)) for _ in range(6)]
    for b, t, v in points:
        params = {"rho_bottom": b, "rho_top": t}
        study.add_trial(
            create_trial(params=params, distributions=DISTS, value=v, intermediate_values={8: v + 1, 16: v})
        )
    low = {"rho_bottom": 0.6, "rho_top": 0.6}
    study.add_trial(create_trial(params=low, distributions=DISTS, value=0.1, state=TrialState.PRUNED))
    study.add_trial(
        create_trial(
            params=low,
            distributions=DISTS,
            state=TrialState.FAIL,
            user_attrs={FAIL_ATTR: {"kind": EVALUATION_FAILED, "reason": "NaN"}},
        )
    )
    return points


def test_best_coefficients_and_summary(url: str) -> None:
    rng = random.Random(42)
    create_studies(
        open_storage(url), [make_spec(5, n_trials=20), make_spec(9, n_trials=20)]
    )  # no warm starts
    points = {nfe: _fill(url, nfe, rng) for nfe in (5, 9)}
    storage = open_storage(url)
    for nfe, pts in points.items():
        b, t, v = min(pts, key=lambda p: p[2])
        best = best_coefficients(url if nfe == 5 else storage, "tiny", nfe, "heun")  # a URL or a storage
        assert (best.rho_bottom, best.rho_top, best.value) == (b, t, v)
        assert best.baseline_value == 5.0 + nfe and best.n_samples == 16  # its last rung
        assert best.n_trials == 1 + 6 + 1 + 1 and best.study_name == make_spec(nfe).name
        assert best.sigma_window is None
    rows = summary_rows(storage, "tiny")
    assert [r["nfe"] for r in rows] == [5, 9]
    for r in rows:
        b, t, v = min(points[r["nfe"]], key=lambda p: p[2])
        assert (r["rho_bottom"], r["rho_top"], r["value"]) == (b, t, v)
        assert r["improvement"] == pytest.approx((r["baseline_value"] - v) / r["baseline_value"])
        assert (r["n_complete"], r["n_pruned"], r["n_failed"], r["n_trials"], r["budget"]) == (7, 1, 1, 9, 20)
    assert summary_rows(storage, "other") == []


def test_best_and_table_verbs(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    pts = _fill(url, 9, random.Random(1))
    b, t, v = min(pts, key=lambda p: p[2])
    assert cli(["best", "--model", "tiny", "--nfe", "9", "--storage", url, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["rho_bottom"], shown["rho_top"], shown["value"], shown["baseline_value"]) == (b, t, v, 14.0)
    assert cli(["best", "--model", "tiny", "--nfe", "9", "--storage", url]) == 0
    text = capsys.readouterr().out
    assert f"{b:.4f}" in text and f"{v:.4f}" in text and "14.0000" in text
    assert cli(["table", "--model", "tiny", "--storage", url, "--json"]) == 0
    assert [r["value"] for r in json.loads(capsys.readouterr().out)] == [v]
    assert cli(["table", "--model", "tiny", "--storage", url]) == 0
    assert "Skip-Tuning: tiny" in capsys.readouterr().out
    assert cli(["study", "list", "--storage", url, "--json"]) == 0
    assert [r["study"] for r in json.loads(capsys.readouterr().out)] == [make_spec(9).name]


def test_clear_errors(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    storage = open_storage(url)
    with pytest.raises(SkiptuneError, match=r"no study for model 'tiny'.*\(none\).*study create"):
        best_coefficients(storage, "tiny", 9)
    create_studies(storage, [make_spec(9)])
    with pytest.raises(SkiptuneError, match="no complete trial yet"):
        best_coefficients(storage, "tiny", 9)
    with pytest.raises(SkiptuneError, match=r"NFE 7.*tiny/heun/nfe=9"):
        best_coefficients(storage, "tiny", 7)
    other_samples = replace(make_spec().objective, n_samples=32, rungs=(8, 32))
    create_studies(storage, [make_spec(9, objective=other_samples)])
    with pytest.raises(SkiptuneError, match=r"2 studies match.*--study"):
        best_coefficients(storage, "tiny", 9)
    # The CLI: one line on stderr, exit code 2, no traceback.
    assert cli(["best", "--model", "tiny", "--nfe", "3", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skiptune best: error: no study") and err.count("\n") == 1


def test_baseline_role_is_what_counts_not_the_params(url: str) -> None:
    storage = open_storage(url)
    (created,) = create_studies(storage, [make_spec(9)])
    study = optuna.load_study(study_name=created.name, storage=storage)
    one = {"rho_bottom": 1.0, "rho_top": 1.0}
    study.add_trial(create_trial(params=one, distributions=DISTS, value=0.5))  # not the enqueued baseline
    best = best_coefficients(storage, "tiny", 9)
    assert best.value == 0.5 and best.baseline_value is None
    roles = [t.user_attrs.get(ROLE_ATTR) for t in study.trials]
    assert roles == ["baseline", None]
