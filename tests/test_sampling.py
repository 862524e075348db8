"""Samplers, EDM schedule, common random numbers and quantisation, against closed-form oracles (CPU)."""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np
import pytest
import torch

from skiptune.cli import build_parser
from skiptune.errors import EvaluationError, SkiptuneError
from skiptune.sampling import (
    SAMPLERS,
    DPMSolverSettings,
    EDMSchedule,
    EulerSettings,
    HeunSettings,
    NFERule,
    PerSampleGenerator,
    denoise,
    edm_sigmas,
    generate_images,
    register_sampler,
    sample_batch,
    to_uint8,
)

RES = 4


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only contend on a shared machine (20x slower with 2 threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class GaussDenoiser:
    """Exact denoiser of N(mu, s^2 I): D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2).

    With ``label_dim`` > 0, ``mu`` is ``[label_dim, C, H, W]`` and the one-hot label picks the mean.
    """

    img_resolution = RES
    sigma_min = 0.0
    sigma_max = math.inf

    def __init__(self, mu: torch.Tensor, s: float, *, label_dim: int = 0) -> None:
        self.mu, self.s, self.label_dim = mu.to(torch.float64), s, label_dim
        self.img_channels = mu.shape[-3]
        self.calls = 0
        self.labels_seen: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None):
        assert x.dtype == torch.float32 and sigma.shape == (x.shape[0],)
        self.calls += 1
        mu = self.mu
        if self.label_dim:
            assert class_labels is not None and class_labels.shape == (x.shape[0], self.label_dim)
            self.labels_seen.append(class_labels.clone())
            mu = torch.einsum("nk,kchw->nchw", class_labels.to(torch.float64), self.mu)
        sig2 = sigma.to(torch.float64).reshape(-1, 1, 1, 1) ** 2
        s2 = self.s**2
        return ((s2 * x.to(torch.float64) + sig2 * mu) / (s2 + sig2)).to(torch.float32)


class MixtureDenoiser:
    """Exact denoiser of a per-dimension iid 1-D Gaussian mixture sum_k w_k N(m_k, s^2)."""

    img_resolution, img_channels, label_dim = RES, 1, 0
    sigma_min, sigma_max = 0.0, math.inf

    def __init__(self, w: list[float], m: list[float], s: float) -> None:
        self.w = torch.tensor(w, dtype=torch.float64)
        self.m = torch.tensor(m, dtype=torch.float64)
        self.s = s

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None):
        x64 = x.to(torch.float64).unsqueeze(-1)  # [..., 1] against components [K]
        var = self.s**2 + sigma.to(torch.float64).reshape(-1, 1, 1, 1, 1) ** 2
        post = torch.softmax(self.w.log() - (x64 - self.m) ** 2 / (2 * var), dim=-1)
        cond_mean = (self.s**2 * x64 + (var - self.s**2) * self.m) / var
        return (post * cond_mean).sum(-1).to(torch.float32)

    def moments(self) -> tuple[float, float, float]:
        """Mean, variance and 4th central moment (for the variance's standard error)."""
        mean = float((self.w * self.m).sum())
        d = self.m - mean
        var = float((self.w * (d**2 + self.s**2)).sum())
        mu4 = float((self.w * (d**4 + 6 * d**2 * self.s**2 + 3 * self.s**4)).sum())
        return mean, var, mu4


def _gauss(channels: int = 1, *, label_dim: int = 0, seed: int = 0) -> GaussDenoiser:
    g = torch.Generator().manual_seed(seed)
    shape = (label_dim, channels, RES, RES) if label_dim else (channels, RES, RES)
    return GaussDenoiser(torch.rand(shape, generator=g) - 0.5, 0.5, label_dim=label_dim)


def _run(spec_name: str, net, x0: torch.Tensor, steps: int, settings=None, *, noise_seed: int = 7):
    """Run a sampler from the exact noisy marginal x_T = x0 + T z (so only the solver is under test)."""
    sigmas = edm_sigmas(net, steps, device="cpu")
    g = torch.Generator().manual_seed(noise_seed)
    x_t = x0 + sigmas[0].item() * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    out = SAMPLERS.get(spec_name).fn(
        net, x_t, sigmas, settings=settings,
        noise=lambda x: torch.randn(x.shape, generator=g, dtype=x.dtype),
    )  # fmt: skip
    return x_t, sigmas, out


# ---------------------------------------------------------------------------- NFE accounting


@pytest.mark.parametrize(
    ("sampler", "nfes"), [("heun", [1, 3, 9, 35]), ("euler", [1, 2, 10]), ("dpmpp_2m", [1, 2, 3, 10])]
)
def test_nfe_is_exact(sampler: str, nfes: list[int]) -> None:
    net = _gauss()
    for nfe in nfes:
        net.calls = 0
        sample_batch(net, sampler=sampler, nfe=nfe, seeds=[3, 4], device="cpu")
        assert net.calls == nfe, (sampler, nfe)


def test_nfe_with_churn_is_unchanged() -> None:
    net = _gauss()
    sample_batch(net, sampler="heun", nfe=9, seeds=[1], device="cpu", settings=HeunSettings(s_churn=10))
    assert net.calls == 9


@pytest.mark.parametrize(
    ("sampler", "nfe", "named"),
    [("heun", 10, ["9", "11"]), ("heun", 0, ["1"]), ("heun", -4, ["1"]), ("euler", 0, ["1"]),
     ("dpmpp_2m", -2, ["1"])],
)  # fmt: skip
def test_invalid_nfe_names_nearest_valid(sampler: str, nfe: int, named: list[str]) -> None:
    with pytest.raises(SkiptuneError, match=f"NFE={nfe}") as info:
        SAMPLERS.get(sampler).steps_for_nfe(nfe)
    assert info.value.args[0].endswith(" or ".join(named))


def test_non_integer_nfe_and_unknown_sampler() -> None:
    with pytest.raises(SkiptuneError, match="integer"):
        SAMPLERS.get("heun").steps_for_nfe(9.0)  # type: ignore[arg-type]
    with pytest.raises(SkiptuneError, match="dpmpp_2m, euler, heun"):
        SAMPLERS.get("ddim")


# ---------------------------------------------------------------------------- settings


def test_settings_record_and_validate() -> None:
    spec = SAMPLERS.get("heun")
    s = HeunSettings(s_churn=40, s_min=0.05, s_max=50, s_noise=1.003)
    assert spec.settings_from_dict(s.to_dict()) == s
    assert SAMPLERS.get("dpmpp_2m").default_settings().to_dict() == {}
    with pytest.raises(SkiptuneError, match="s_churn"):
        HeunSettings(s_churn=-1)
    with pytest.raises(SkiptuneError, match="unknown heun sampler setting"):
        spec.settings_from_dict({"churn": 1})
    with pytest.raises(SkiptuneError, match="takes HeunSettings, got EulerSettings"):
        sample_batch(_gauss(), sampler="heun", nfe=3, seeds=[0], device="cpu", settings=EulerSettings())
    assert isinstance(SAMPLERS.get("dpmpp_2m").check_settings(None), DPMSolverSettings)


# ---------------------------------------------------------------------------- schedule


class _RangeNet:
    img_resolution, img_channels, label_dim = RES, 1, 0

    def __init__(self, lo: float, hi: float, grid: float | None = None) -> None:
        self.sigma_min, self.sigma_max, self.grid = lo, hi, grid

    def __call__(self, x, sigma, class_labels=None):
        return x

    def round_sigma(self, sigma):
        sigma = torch.as_tensor(sigma)
        return sigma if self.grid is None else (sigma / self.grid).round() * self.grid


def _edm_reference(steps: int, lo: float, hi: float, rho: float = 7.0) -> np.ndarray:
    i = np.arange(steps, dtype=np.float64)
    levels = (hi ** (1 / rho) + i / (steps - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    return np.append(levels, 0.0)


def test_schedule_matches_edm_formula_and_clamps() -> None:
    got = edm_sigmas(_RangeNet(0.0, math.inf), 18, device="cpu")
    assert got.dtype == torch.float64 and got.shape == (19,)
    np.testing.assert_allclose(got.numpy(), _edm_reference(18, 0.002, 80.0), rtol=1e-14)
    assert got[0].item() == pytest.approx(80.0) and got[-2].item() == pytest.approx(0.002)
    clamped = edm_sigmas(_RangeNet(0.02, 50.0), 5, device="cpu")
    np.testing.assert_allclose(clamped.numpy(), _edm_reference(5, 0.02, 50.0), rtol=1e-14)
    custom = edm_sigmas(_RangeNet(0, math.inf), 6, device="cpu", schedule=EDMSchedule(rho=3, sigma_max=10))
    np.testing.assert_allclose(custom.numpy(), _edm_reference(6, 0.002, 10.0, rho=3), rtol=1e-14)
    one = edm_sigmas(_RangeNet(0.0, math.inf), 1, device="cpu")
    assert one.tolist() == [80.0, 0.0]


def test_schedule_rounds_and_caches() -> None:
    net = _RangeNet(0.0, math.inf, grid=0.25)
    got = edm_sigmas(net, 7, device="cpu")
    expected = np.round(_edm_reference(7, 0.002, 80.0) / 0.25) * 0.25
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12)
    assert edm_sigmas(net, 7, device="cpu") is got  # built once per (net, steps, device)
    assert edm_sigmas(net, 8, device="cpu") is not got
    with pytest.raises(SkiptuneError, match="no positive interval"):
        edm_sigmas(_RangeNet(100.0, 200.0), 4, device="cpu")
    with pytest.raises(SkiptuneError, match="rho"):
        EDMSchedule(rho=0)


# ---------------------------------------------------------------------------- oracles

N_ORACLE = 4096
# Mean: RMS over the 16 dims of (mean_hat - mu) / s; 4096 * RMS^2 ~ chi2_16 / 16, and
# P(chi2_16 > 16 * (0.03 * 64)^2 = 59) < 1e-6.
MEAN_TOL = 0.03
# Pooled std over 16 iid-error dims x 4096 samples: SE of std/s ~ 1/sqrt(2 * 65536) = 0.0028; 5 SE.
STD_TOL = 5 / math.sqrt(2 * 16 * N_ORACLE)


def _gauss_errors(out: torch.Tensor, net: GaussDenoiser) -> tuple[float, float]:
    e_mean = (((out.mean(0) - net.mu) / net.s) ** 2).mean().sqrt().item()
    e_std = abs(out.var(0).mean().sqrt().item() / net.s - 1)
    return e_mean, e_std


def _gauss_data(net: GaussDenoiser, seed: int = 11) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return net.mu + net.s * torch.randn((N_ORACLE, *net.mu.shape), generator=g, dtype=torch.float64)


@pytest.mark.parametrize(
    ("sampler", "steps", "final_steps", "min_ratio"),
    [("heun", [4, 8, 16, 32, 64], 64, 3.0), ("euler", [8, 16, 32, 64], 512, 1.8),
     ("dpmpp_2m", [16, 32, 64], 64, 3.0)],
)  # fmt: skip
def test_deterministic_samplers_converge_on_gaussian(sampler, steps, final_steps, min_ratio) -> None:
    """Per-sample error to the exact probability-flow solution falls at the sampler's order, and the
    output distribution matches N(mu, s^2)."""
    net = _gauss()
    x0 = _gauss_data(net)
    errors = []
    for n in steps:
        x_t, sigmas, out = _run(sampler, net, x0, n)
        t, lo, s = sigmas[0].item(), sigmas[-2].item(), net.s
        # ODE flow x(sigma) = mu + (x_T - mu) sqrt(s^2+sigma^2)/sqrt(s^2+T^2) to sigma_min, then the
        # final step returns D(x, sigma_min) exactly.
        exact = net.mu + (x_t - net.mu) * s**2 / math.sqrt((s**2 + lo**2) * (s**2 + t**2))
        errors.append(((out - exact).abs().max() / s).item())
    ratios = [a / b for a, b in itertools.pairwise(errors)]
    assert min(ratios) > min_ratio, (errors, ratios)
    _, _, out = _run(sampler, net, x0, final_steps)
    e_mean, e_std = _gauss_errors(out, net)
    assert e_mean < MEAN_TOL and e_std < STD_TOL, (e_mean, e_std)


def test_heun_churn_converges_on_gaussian() -> None:
    net = _gauss()
    x0 = _gauss_data(net)
    churn = HeunSettings(s_churn=40, s_min=0.05, s_max=50)
    std_errors = []
    for n in [4, 8, 16, 32, 128]:
        _, _, out = _run("heun", net, x0, n, churn)
        e_mean, e_std = _gauss_errors(out, net)
        std_errors.append(e_std)
    assert all(a > b for a, b in itertools.pairwise(std_errors)), std_errors
    assert e_mean < MEAN_TOL and e_std < STD_TOL, (e_mean, e_std)
    # The churn really injects noise: the result differs from the deterministic sampler's.
    _, _, plain = _run("heun", net, x0, 128)
    assert (plain - out).abs().max().item() > 0.1


@pytest.mark.parametrize(
    ("sampler", "steps", "settings"),
    [("heun", 64, None), ("heun", 128, HeunSettings(s_churn=40, s_min=0.05, s_max=50)),
     ("dpmpp_2m", 64, None), ("euler", 256, None)],
)  # fmt: skip
def test_samplers_reproduce_gaussian_mixture(sampler, steps, settings) -> None:
    net = MixtureDenoiser([0.3, 0.7], [-0.6, 0.5], 0.15)
    mean, var, mu4 = net.moments()
    g = torch.Generator().manual_seed(3)
    comp = torch.multinomial(net.w, N_ORACLE * RES * RES, replacement=True, generator=g)
    x0 = net.m[comp] + net.s * torch.randn(comp.shape, generator=g, dtype=torch.float64)
    _, _, out = _run(sampler, net, x0.reshape(N_ORACLE, 1, RES, RES), steps, settings)
    n = out.numel()  # dims are iid and independent: pool them
    # 5 standard errors of the sample mean and variance
    assert abs(out.mean().item() - mean) < 5 * math.sqrt(var / n)
    assert abs(out.var().item() - var) < 5 * math.sqrt((mu4 - var**2) / n)


# ---------------------------------------------------------------------------- common random numbers


def _images(net, seeds, batch_size, **kw) -> torch.Tensor:
    return torch.cat(list(generate_images(net, seeds=seeds, batch_size=batch_size, device="cpu", **kw)))


@pytest.mark.parametrize(
    ("sampler", "nfe", "settings", "label_dim"),
    [("heun", 9, None, 0), ("heun", 9, HeunSettings(s_churn=30, s_min=0.01, s_max=10), 0),
     ("dpmpp_2m", 6, None, 5)],
)  # fmt: skip
def test_sample_depends_only_on_its_seed(sampler, nfe, settings, label_dim) -> None:
    seeds = list(range(100, 164))
    kw = {"sampler": sampler, "nfe": nfe, "settings": settings}
    nets: dict[int, GaussDenoiser] = {}
    results: dict[int | str, torch.Tensor] = {}
    for bs in (1, 7, 64):
        nets[bs] = _gauss(3, label_dim=label_dim)
        results[bs] = _images(nets[bs], seeds, bs, **kw)
    split = _gauss(3, label_dim=label_dim)
    results["split"] = torch.cat(
        [_images(split, part, 16, **kw) for part in (seeds[:20], seeds[20:41], seeds[41:])]
    )
    reference = results[64]
    assert reference.dtype == torch.uint8 and reference.shape == (64, 3, RES, RES)
    assert len(torch.unique(reference.flatten(1), dim=0)) == 64  # samples differ from each other
    for key, images in results.items():
        assert torch.equal(images, reference), key
    if label_dim:
        # labels: the first call of every batch shows the batch's labels, in seed order
        def labels(net: GaussDenoiser) -> torch.Tensor:
            return torch.cat(net.labels_seen[::nfe]).argmax(1)

        ref_labels = labels(nets[64])
        assert torch.equal(labels(nets[1]), ref_labels) and torch.equal(labels(nets[7]), ref_labels)
        assert set(ref_labels.tolist()) == set(range(label_dim))  # uniform draw covers all classes


def test_seed_order_and_fixed_class() -> None:
    net = _gauss(3, label_dim=4)
    a = _images(net, [5, 3, 9], 3, sampler="euler", nfe=4)
    b = _images(net, [9, 5, 3], 2, sampler="euler", nfe=4)
    assert torch.equal(a[[2, 0, 1]], b)
    net.labels_seen.clear()
    _images(net, [5, 3, 9], 3, sampler="euler", nfe=4, class_labels=2)
    assert all(torch.equal(lab.argmax(1), torch.full((3,), 2)) for lab in net.labels_seen)
    with pytest.raises(SkiptuneError, match="out of range"):
        _images(net, [0], 1, sampler="euler", nfe=4, class_labels=4)


def test_generate_yields_batches_in_order() -> None:
    batches = list(generate_images(_gauss(), sampler="euler", nfe=2, seeds=range(10), batch_size=4,
                                   device="cpu"))  # fmt: skip
    assert [b.shape[0] for b in batches] == [4, 4, 2]
    with pytest.raises(SkiptuneError, match="batch size 0"):
        next(generate_images(_gauss(), sampler="euler", nfe=2, seeds=[0], batch_size=0, device="cpu"))


# ---------------------------------------------------------------------------- quantisation, failures


def test_to_uint8_matches_edm_formula() -> None:
    x = torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 1.5
    assert (x < -1).any() and (x > 1).any()
    expected = np.floor(np.clip(x.numpy() * 127.5 + 128, 0, 255)).astype(np.uint8)
    got = to_uint8(x)
    assert got.dtype == torch.uint8
    np.testing.assert_array_equal(got.numpy(), expected)
    x32 = x.float()
    expected32 = np.floor(np.clip(x32.numpy() * 127.5 + 128, 0, 255)).astype(np.uint8)
    np.testing.assert_array_equal(to_uint8(x32).numpy(), expected32)


class _NaNForSomeSeeds(GaussDenoiser):
    def __call__(self, x, sigma, class_labels=None):
        out = super().__call__(x, sigma, class_labels)
        out[x[:, 0, 0, 0] > 0] = float("nan")
        return out


def test_nan_samples_raise_evaluation_error() -> None:
    base = _gauss()
    net = _NaNForSomeSeeds(base.mu, base.s)
    with pytest.raises(EvaluationError, match=r"\d+ of 16 samples are NaN/inf .* seeds \d+"):
        list(generate_images(net, sampler="heun", nfe=5, seeds=range(16), batch_size=16, device="cpu"))


# ---------------------------------------------------------------------------- registering a sampler


@dataclass(frozen=True)
class _RK2Settings:
    alpha: float = 0.5  # where the second evaluation sits along the step: 1/2 midpoint, 2/3 Ralston

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _rk2(denoiser, x, sigmas, *, class_labels, noise, settings: _RK2Settings):
    """Explicit 2-stage Runge-Kutta on the probability-flow ODE (Ralston 1962), every step to sigma = 0."""
    a = settings.alpha
    for t, t_next in itertools.pairwise(sigmas.tolist()):
        d1 = (x - denoise(denoiser, x, t, class_labels)) / t
        x_a, t_a = x + a * (t_next - t) * d1, t + a * (t_next - t)
        d2 = (x_a - denoise(denoiser, x_a, t_a, class_labels)) / t_a
        x = x + (t_next - t) * ((1 - 1 / (2 * a)) * d1 + 1 / (2 * a) * d2)
    return x


@pytest.fixture
def rk2_registered(monkeypatch: pytest.MonkeyPatch) -> str:
    """``rk2`` registered in one place, as a new sampler would be, and gone again after the test."""
    monkeypatch.setattr(SAMPLERS, "_items", dict(SAMPLERS._items))
    register_sampler("rk2", settings=_RK2Settings, nfe=NFERule(2))(_rk2)
    return "rk2"


def test_sampler_registered_in_one_place_runs_end_to_end(rk2_registered: str) -> None:
    net, seeds, nfe = _gauss(), list(range(20, 32)), 64
    images = {a: _images(net, seeds, 5, sampler=rk2_registered, nfe=nfe, settings=_RK2Settings(a))
              for a in (0.5, 2 / 3)}  # fmt: skip
    assert net.calls == 2 * 3 * nfe  # the NFE rule: 32 steps of 2 evaluations, per batch of 5, 5, 2
    assert not torch.equal(images[0.5], images[2 / 3])  # the settings reach the sampler
    # oracle: the exact probability-flow ODE from the same initial noise to sigma = 0
    t0 = edm_sigmas(net, nfe // 2, device="cpu")[0].item()
    x_t = PerSampleGenerator(seeds).randn([1, RES, RES]).double() * t0
    exact = to_uint8(net.mu + (x_t - net.mu) * net.s / math.sqrt(net.s**2 + t0**2))
    for out in images.values():
        assert (out.int() - exact.int()).abs().max().item() <= 1
    spec = SAMPLERS.get(rk2_registered)
    assert spec.settings_from_dict({"alpha": 0.75}) == _RK2Settings(0.75)
    with pytest.raises(SkiptuneError, match=r"NFE=7 .* 6 or 8$"):
        spec.steps_for_nfe(7)
    with pytest.raises(SkiptuneError, match="takes _RK2Settings, got HeunSettings"):
        sample_batch(net, sampler=rk2_registered, nfe=4, seeds=[0], device="cpu", settings=HeunSettings())
    argv = ["sample", "--model", "m", "--nfe", "8", "--sampler", rk2_registered, "--out", "x.png"]
    assert build_parser().parse_args(argv).sampler == rk2_registered  # CLI choices come from the registry
