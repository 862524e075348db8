"""``skiptune analyze``: per-sigma losses against a direct computation, common random numbers, the paired
ratio, the suggested window, and the verb end to end on the bundled demo model (CPU, small N)."""

from __future__ import annotations

import json
import math
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_precond

from skiptune.analysis import (
    analyze,
    image_noise,
    paired_ratio,
    parse_sigmas,
    per_image_losses,
    sigma_grid,
    significant_runs,
    suggest_window,
)
from skiptune.cli import build_parser, main
from skiptune.demo.data import fmnist_root
from skiptune.errors import SkiptuneError
from skiptune.objectives.features import ModuleExtractor
from skiptune.sampling.generate import to_uint8
from skiptune.skips import SkipSchedule, skip_tuning

RESULTS_DB = Path(__file__).resolve().parents[1] / "docs" / "results" / "results.db"
SCHEDULES = [SkipSchedule(), SkipSchedule(0.5, 1.3), SkipSchedule(1.2, 0.7)]
SIGMAS = [0.05, 0.7, 9.0]


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    return tiny_precond(img_resolution=16, img_channels=3)


@pytest.fixture(scope="module")
def extractor() -> ModuleExtractor:
    """A fixed random linear map of the [0, 1] pixels: a real ModuleExtractor, cheap and exact."""
    gen = torch.Generator().manual_seed(7)
    linear = torch.nn.Linear(3 * 16 * 16, 8)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(8, 3 * 16 * 16, generator=gen) / 16)
        linear.bias.copy_(torch.randn(8, generator=gen))
    module = torch.nn.Sequential(torch.nn.Flatten(), linear)
    return ModuleExtractor(
        module, name="tiny-linear", feature_dim=8, input_channels=3, device="cpu", input_format="float01"
    )


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randint(
        0, 256, (5, 3, 16, 16), generator=torch.Generator().manual_seed(3), dtype=torch.uint8
    )


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _direct(net, extractor, image, seed, schedule, sigma):
    """One image's losses written out from the formulas, one image at a time (an independent oracle)."""
    x = image[None].float() / 127.5 - 1
    noise = torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(seed))[None]
    with skip_tuning(net, schedule), torch.no_grad():
        denoised = net(x + sigma * noise, torch.tensor([sigma]))
    pixel = float(((denoised.double() - x.double()) ** 2).mean())
    diff = extractor(to_uint8(denoised)).double() - extractor(image[None]).double()
    return pixel, float((diff**2).sum())


def test_losses_equal_a_direct_computation(net, extractor, images):
    losses = per_image_losses(
        net, images, schedules=SCHEDULES, sigmas=SIGMAS, extractor=extractor, seed=11, batch_size=2
    )
    assert losses.pixel.shape == losses.feature.shape == (3, 3, 5)
    for s, schedule in enumerate(SCHEDULES):
        for k, sigma in enumerate(SIGMAS):
            for i in range(5):
                pixel, feature = _direct(net, extractor, images[i], 11 + i, schedule, sigma)
                assert losses.pixel[s, k, i] == pytest.approx(pixel, rel=1e-5)
                assert losses.feature[s, k, i] == pytest.approx(feature, rel=1e-2, abs=1e-6)  # uint8 rounding
    lam = (0.7**2 + 0.25) / (0.7 * 0.5) ** 2  # EDM's weight at sigma 0.7, sigma_data 0.5
    assert losses.weighted_pixel[1, 1] == pytest.approx(lam * losses.pixel[1, 1])
    assert not np.allclose(losses.pixel[1], losses.pixel[0])  # the pair changes the denoiser


def test_baseline_against_itself_is_exactly_one(net, extractor, images):
    result = analyze(net, images, schedules=[SkipSchedule(1, 1), SkipSchedule(0.5, 1.3)],
                     extractor=extractor, sigmas=SIGMAS, batch_size=3)  # fmt: skip
    same, tuned = result.comparisons
    for row in same.rows:
        assert (row["pixel_ratio"], row["pixel_ratio_se"]) == (1.0, 0.0)
        assert (row["feature_ratio"], row["feature_ratio_se"]) == (1.0, 0.0)
    assert same.window is None
    assert all(r["pixel_ratio"] != 1.0 and r["pixel_ratio_se"] > 0 for r in tuned.rows)


def test_common_random_numbers_across_schedules_and_batches(net, extractor, images):
    # the baseline's losses do not depend on which other schedules run, nor on the batch size
    alone = per_image_losses(net, images, schedules=SCHEDULES[:1], sigmas=SIGMAS, extractor=extractor,
                             seed=4, batch_size=5)  # fmt: skip
    mixed = per_image_losses(net, images, schedules=SCHEDULES[::-1], sigmas=SIGMAS, extractor=extractor,
                             seed=4, batch_size=2)  # fmt: skip
    np.testing.assert_allclose(mixed.pixel[2], alone.pixel[0], rtol=1e-6)
    # features see uint8 images: a last-bit difference between batch sizes may flip one pixel's rounding
    np.testing.assert_allclose(mixed.feature[2], alone.feature[0], rtol=1e-2, atol=1e-6)
    # image i's noise comes from seed + i alone: the same row in any batch
    torch.testing.assert_close(image_noise([5, 6, 7], (3, 4, 4), torch.device("cpu"))[1],
                               image_noise([6], (3, 4, 4), torch.device("cpu"))[0])  # fmt: skip
    other = per_image_losses(net, images, schedules=SCHEDULES[:1], sigmas=SIGMAS, extractor=extractor,
                             seed=5, batch_size=5)  # fmt: skip
    assert not np.allclose(other.pixel, alone.pixel)  # the seed does pick the noise


def test_paired_ratio_standard_error_is_calibrated():
    rng = np.random.default_rng(0)
    estimates, ses = [], []
    for _ in range(400):
        b = rng.gamma(2.0, 1.0, size=200)
        a = 1.3 * b * rng.lognormal(0, 0.3, size=200)  # correlated pairs, heavy-ish tails
        r = paired_ratio(a, b)
        estimates.append(r.value)
        ses.append(r.se)
    assert np.mean(ses) == pytest.approx(np.std(estimates), rel=0.15)
    r = paired_ratio(np.array([2.0, 4.0, 3.0]), np.array([1.0, 2.0, 2.0]))
    residual = np.array([2.0, 4.0, 3.0]) - (9 / 5) * np.array([1.0, 2.0, 2.0])
    assert r.value == pytest.approx(9 / 5)
    assert r.se == pytest.approx(math.sqrt((residual**2).sum() / 6) / (5 / 3))


def test_window_on_constructed_curves():
    sigmas = [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]
    ratios = [1.0, 0.9, 0.8, 0.95, 1.1, 0.7]
    ses = [0.01] * 6
    w = suggest_window(sigmas, ratios, ses, z=2.0)
    assert w is not None and w.points == 3  # 0.35 summed reduction beats the lone 0.3 at the top
    assert w.lo == pytest.approx(math.sqrt(0.01 * 0.1)) and w.hi == pytest.approx(math.sqrt(10 * 100))
    assert w.mean_ratio == pytest.approx((0.9 + 0.8 + 0.95) / 3) and w.reduction == pytest.approx(0.35)
    runs = significant_runs(sigmas, ratios, ses, z=2.0)
    assert [(r.points, r.hi) for r in runs] == [(3, w.hi), (1, 1000.0)] and runs[0] == w
    top = suggest_window(sigmas, [1.0, 0.9, 1.0, 1.0, 1.0, 0.7], ses)
    assert top is not None and (top.lo, top.hi) == (pytest.approx(math.sqrt(100 * 1000)), 1000.0)
    first = suggest_window(sigmas, [0.9, 1.0, 1.0, 1.0, 1.0, 0.9], ses)  # a tie goes to the lower sigmas
    assert first is not None and (first.lo, first.hi) == (0.01, pytest.approx(math.sqrt(0.01 * 0.1)))
    assert suggest_window(sigmas, ratios, [0.2] * 6) is None  # nothing significant
    assert suggest_window(sigmas, [math.nan] * 6, ses) is None


# `analyze` on the demo model reads the reference's real images (dataset-fashion-mnist; .ci/run installs it)
needs_fmnist = pytest.mark.skipif(
    not (fmnist_root() / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (dataset-fashion-mnist)",
)


def test_sigma_grid_and_parsing():
    grid = sigma_grid(0.002, 80, 24)
    assert len(grid) == 24 and (grid[0], grid[-1]) == (0.002, 80.0)  # exact: 80 is the sampler's first level
    assert np.allclose(np.diff(np.log(grid)), math.log(80 / 0.002) / 23)
    assert parse_sigmas("0.05,0.5,5") == [0.05, 0.5, 5.0]
    assert parse_sigmas("0.1:10:3") == pytest.approx([0.1, 1.0, 10.0])
    for bad in ("0.5,0.05", "0,1", "a,b", "1:0.1:3"):
        with pytest.raises(SkiptuneError, match=r"bad (--sigmas|sigma grid)"):
            parse_sigmas(bad)


@needs_fmnist
def test_cli_on_the_demo_model(tmp_path, capsys):
    png = tmp_path / "analysis.png"
    args = ["analyze", "--model", "demo", "--rho", "0.485", "0.328", "--nfe", "5", "--n-images", "64",
            "--sigmas", "0.05,0.3,1.5,10", "--device", "cpu", "--batch-size", "32", "--json",
            "--out", str(png)]  # fmt: skip
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out["model"], out["n_images"], out["extractor"]) == ("demo", 64, "fmnist-classifier")
    assert out["images"] == "Fashion-MNIST test" and out["sampler_sigmas"] == pytest.approx(
        [80, 2.5152, 0.002], rel=1e-3
    )
    (comparison,) = out["comparisons"]
    assert comparison["schedule"] == {"rho_bottom": 0.485, "rho_top": 0.328, "sigma_window": None}
    assert [r["sigma"] for r in comparison["rows"]] == [0.05, 0.3, 1.5, 10.0]
    for row in comparison["rows"]:
        assert row["pixel_ratio_se"] > 0 and row["feature_ratio_se"] > 0
        assert row["pixel_tuned"] / row["pixel_baseline"] == pytest.approx(row["pixel_ratio"])
    # a strong pair at NFE 5 raises the pixel loss at low sigma by far more than its error
    assert comparison["rows"][0]["pixel_ratio"] - 2 * comparison["rows"][0]["pixel_ratio_se"] > 1
    for command in comparison["check"]:  # the printed eval commands parse as skiptune commands
        parsed = build_parser().parse_args(shlex.split(command)[1:])
        assert parsed.verb == "eval" and parsed.nfe == 5 and parsed.seed_base == 2_000_000_000
    if comparison["window"] is not None:
        assert "--sigma-window" in comparison["check"][0]


@needs_fmnist
def test_cli_takes_the_pair_of_a_study_and_prints_a_table(tmp_path, capsys):
    db = tmp_path / "results.db"
    shutil.copy(RESULTS_DB, db)  # the committed results of the demo studies; never written to
    args = ["analyze", "--model", "demo", "--nfe", "5", "--tuned", "--storage", f"sqlite:///{db}",
            "--n-images", "16", "--sigmas", "0.5,5", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "the recommended pair of demo/heun/nfe=5/23a901 (status validated)" in text
    assert "rho = (0.23601, 0.398039) vs (1, 1)" in text
    assert "pixel ratio" in text and "feature ratio" in text
    # Heun NFE 19 answered no-gain: its answer is (1, 1), nothing to compare; --search-best says how
    no_gain = ["analyze", "--model", "demo", "--nfe", "19", "--tuned", "--storage", f"sqlite:///{db}"]
    assert main([*no_gain, "--device", "cpu"]) == 2
    assert "--search-best" in capsys.readouterr().err


def test_cli_user_errors(capsys):
    assert main(["analyze", "--model", "demo", "--device", "cpu"]) == 2
    assert "nothing to compare with (1, 1)" in capsys.readouterr().err
    assert main(["analyze", "--model", "demo", "--rho", "0.9", "1", "--sigmas", "5,1"]) == 2
    assert "bad --sigmas '5,1'" in capsys.readouterr().err
    assert main(["analyze", "--model", "demo", "--tuned"]) == 2
    assert "--tuned/--study needs --nfe" in capsys.readouterr().err
    assert main(["analyze", "--model", "demo", "--rho", "0.9", "1", "--search-best"]) == 2
    assert "--search-best picks a study's candidate" in capsys.readouterr().err


def test_documented_analyze_commands_parse():
    """Every ``skiptune analyze`` command in docs/analysis.md and README.md is accepted by the CLI parser."""
    repo = Path(__file__).resolve().parents[1]
    found = 0
    for doc in (repo / "docs" / "analysis.md", repo / "README.md"):
        text = doc.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" #")[0].split(" > ")[0].strip()
            if line.startswith("skiptune analyze "):
                build_parser().parse_args(shlex.split(line)[1:])
                found += 1
    assert found >= 6
