"""FDObjective on a tiny random EDM net and a tiny extractor: rungs, one-shot equality, batch sizes."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import scipy.linalg
import torch
from helpers import TINY_SONG, tiny_precond

from skiptune.errors import EvaluationError, SkiptuneError
from skiptune.objectives.fid import FDObjective
from skiptune.objectives.reference import ReferenceStats
from skiptune.objectives.spec import ObjectiveSpec, check_rungs
from skiptune.sampling import generate_images
from skiptune.skips import SkipSchedule, skip_tuning

RES, DIM = 16, 6


class _PoolExtractor:
    """A FeatureExtractor: pooled pixels through a fixed random linear map (a stand-in for Inception)."""

    name = "pool-linear"
    feature_dim = DIM
    input_channels = 3
    device = torch.device("cpu")

    def __init__(self, input_resolution: int | None = None) -> None:
        self.input_resolution = input_resolution
        g = torch.Generator().manual_seed(0)
        self.weight = torch.randn(3 * 4 * 4, DIM, generator=g, dtype=torch.float64)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.avg_pool2d(images.double() / 255, RES // 4)
        return (pooled.flatten(1) @ self.weight).float()


def _reference(
    *, resolution: int | None = RES, dim: int = DIM, extractor: str = "pool-linear"
) -> ReferenceStats:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, dim)) * 0.3 + 1.0
    return ReferenceStats(
        mu=x.mean(0), sigma=np.cov(x, rowvar=False), resolution=resolution, extractor=extractor
    )


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    return tiny_precond("SongUNet", img_resolution=RES, img_channels=3)


def _objective(net: torch.nn.Module, **overrides: object) -> FDObjective:
    config: dict[str, Any] = dict(
        denoiser=net,
        sampler="euler",
        nfe=2,
        extractor=_PoolExtractor(),
        reference=_reference(),
        n_samples=11,
        rungs=[4, 11],
        seed_base=100,
        batch_size=5,
        progress=False,
    )
    config.update(overrides)
    spec = ObjectiveSpec.describe(
        config["extractor"], config["reference"], reference_name="ref.npz",
        **{k: config.pop(k) for k in ("n_samples", "rungs", "seed_base")},
    )  # fmt: skip
    return FDObjective(spec=spec, **config)


def _independent_fd(features: np.ndarray, ref: ReferenceStats) -> float:
    mu, sigma = features.mean(0), np.cov(features, rowvar=False)
    covmean = np.real(scipy.linalg.sqrtm(sigma @ ref.sigma))
    return float(((mu - ref.mu) ** 2).sum() + np.trace(sigma) + np.trace(ref.sigma) - 2 * np.trace(covmean))


def test_rungs_and_equality_with_one_shot(net: torch.nn.Module) -> None:
    schedule = SkipSchedule(rho_bottom=0.8, rho_top=1.1)
    results = list(_objective(net).evaluate(schedule))
    assert [n for n, _ in results] == [4, 11]
    assert all(math.isfinite(d) and d > 0 for _, d in results)

    with skip_tuning(net, schedule):
        (images,) = generate_images(
            net, sampler="euler", nfe=2, seeds=range(100, 111), batch_size=11, device="cpu"
        )
    feats = _PoolExtractor()(images).double().numpy()
    ref = _reference()
    assert results[0][1] == pytest.approx(_independent_fd(feats[:4], ref), rel=1e-6)
    assert results[1][1] == pytest.approx(_independent_fd(feats, ref), rel=1e-6)
    coef: torch.Tensor = net.model.skip_coefficients  # type: ignore[union-attr,assignment]
    assert torch.equal(coef, torch.ones_like(coef))  # restored


def test_batch_size_independence_and_schedule_matters(net: torch.nn.Module) -> None:
    schedule = SkipSchedule(rho_bottom=0.9, rho_top=1.0)
    by_batch = [list(_objective(net, batch_size=b).evaluate(schedule)) for b in (1, 5)]
    for other in by_batch[1:]:
        assert [n for n, _ in other] == [n for n, _ in by_batch[0]]
        np.testing.assert_allclose([d for _, d in other], [d for _, d in by_batch[0]], rtol=1e-9)
    identity = list(_objective(net).evaluate(SkipSchedule()))
    assert identity[-1][1] != pytest.approx(by_batch[0][-1][1], rel=1e-6)


def test_identity_names_everything_that_changes_the_number(net: torch.nn.Module) -> None:
    ident = _objective(net).identity()
    assert ident["extractor"] == "pool-linear" and ident["nfe"] == "2" and ident["sampler"] == "euler"
    assert ident["rungs"] == "4,11" and ident["n_samples"] == "11" and ident["seed_base"] == "100"
    assert ident["reference_sha256"] == _reference().sha256
    assert "s_churn" in ident["sampler_settings"]
    assert _objective(net, batch_size=2).identity() == ident  # batch size never changes the number
    assert all(isinstance(v, str) for v in ident.values())


def test_up_front_validation(net: torch.nn.Module) -> None:
    with pytest.raises(SkiptuneError, match="bad rungs"):
        _objective(net, rungs=[11, 4])
    with pytest.raises(SkiptuneError, match="bad rungs"):
        _objective(net, rungs=[4, 10])
    with pytest.raises(SkiptuneError, match="takes 32x32 images but the model makes 16x16"):
        _objective(net, extractor=_PoolExtractor(input_resolution=32))
    with pytest.raises(SkiptuneError, match="32x32 images but the model makes 16x16"):
        _objective(net, reference=_reference(resolution=32))
    with pytest.raises(SkiptuneError, match="computed with extractor 'other'"):
        _objective(net, reference=_reference(extractor="other"))
    with pytest.raises(SkiptuneError, match="NFE"):
        _objective(net, sampler="heun", nfe=4)
    assert check_rungs([2, 5], 5) == (2, 5)


def test_non_finite_samples_raise_evaluation_error() -> None:
    broken = tiny_precond("SongUNet", img_resolution=RES, img_channels=3, seed=3)
    with torch.no_grad():
        next(broken.parameters()).fill_(float("nan"))
    with pytest.raises(EvaluationError, match="NaN"):
        list(_objective(broken).evaluate(SkipSchedule()))


class _ScriptedPool(torch.nn.Module):
    """The pool-linear extractor as a TorchScript file (what `--extractor torchscript:PATH` loads)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("weight", _PoolExtractor().weight.float())
        self.input_format = "float01"
        self.input_resolution = RES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(x, 4).flatten(1) @ self.weight  # type: ignore[operator]


@pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")
def test_cli_stats_then_eval(net: torch.nn.Module, tmp_path, capsys, monkeypatch) -> None:
    from skiptune.cli import main
    from skiptune.nets.checkpoints import save_checkpoint
    from skiptune.objectives.features import create_extractor
    from skiptune.objectives.reference import load_reference

    monkeypatch.setenv("SKIPTUNE_CACHE", str(tmp_path / "cache"))
    torch.jit.save(torch.jit.script(_ScriptedPool()), str(tmp_path / "ext.pt"))
    rng = np.random.default_rng(8)
    np.savez(tmp_path / "real.npz", images=rng.integers(0, 256, (20, RES, RES, 3), dtype=np.uint8))
    config = dict(img_resolution=RES, img_channels=3, label_dim=0, model_type="SongUNet", **TINY_SONG)
    save_checkpoint(net, tmp_path / "model.pt", config=config)
    ext = f"torchscript:{tmp_path / 'ext.pt'}"

    stats_args = ["stats", "--source", str(tmp_path / "real.npz"), "--extractor", ext]
    assert main([*stats_args, "--out", str(tmp_path / "ref.npz"), "--device", "cpu", "--no-progress"]) == 0
    ref = load_reference(tmp_path / "ref.npz")
    assert (ref.count, ref.resolution, ref.extractor, ref.feature_dim) == (20, RES, ext, DIM)
    capsys.readouterr()

    eval_args = ["eval", "--model", str(tmp_path / "model.pt"), "--nfe", "2", "--sampler", "euler"]
    eval_args += ["--rho", "0.9", "1.0", "--extractor", ext, "--reference", str(tmp_path / "ref.npz")]
    eval_args += ["--n-samples", "6", "--rungs", "4,6", "--batch-size", "5", "--device", "cpu"]
    assert main([*eval_args, "--no-progress", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    direct = _objective(
        net, extractor=create_extractor(ext), reference=ref, n_samples=6, rungs=[4, 6], seed_base=0
    )
    want = list(direct.evaluate(SkipSchedule(rho_bottom=0.9, rho_top=1.0)))
    assert [(r["samples"], r["distance"]) for r in out["results"]] == [(n, pytest.approx(d)) for n, d in want]
    assert out["objective"]["reference_sha256"] == ref.sha256

    assert main([*eval_args[:-2], "--reference", str(tmp_path / "missing.npz")]) == 2
    assert "skiptune stats" in capsys.readouterr().err


def test_the_spec_must_name_the_extractor_and_reference_given(net: torch.nn.Module) -> None:
    right = _objective(net)
    for wrong in (
        replace(right.spec, reference_sha256="b" * 64),
        replace(right.spec, extractor="other"),
        replace(right.spec, feature_dim=DIM + 1),
    ):
        with pytest.raises(SkiptuneError, match="the objective spec names"):
            FDObjective(
                spec=wrong, denoiser=net, sampler="euler", nfe=2, extractor=right.extractor,
                reference=right.reference, progress=False,
            )  # fmt: skip
