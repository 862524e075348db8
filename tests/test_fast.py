"""The fast sampling path on the CPU: exact fp32, close bf16, skip tuning through it, no recompiles."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_precond

from skiptune.errors import SkiptuneError
from skiptune.nets.fast import FP32, FastPath, default_fast_path, prepare_denoiser
from skiptune.sampling import sample_batch
from skiptune.skips import SkipSchedule, find_adapter, skip_tuning


def _inputs(
    net: torch.nn.Module, n: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    res, ch = int(net.img_resolution), int(net.img_channels)  # type: ignore[arg-type]
    sigma = torch.exp(torch.randn(n, generator=gen) * 1.2 - 0.4)  # EDM's training sigma distribution
    x = torch.randn(n, ch, res, res, generator=gen) * (sigma.reshape(-1, 1, 1, 1) ** 2 + 0.25).sqrt()
    label_dim = int(net.label_dim)  # type: ignore[arg-type]
    labels = None
    if label_dim:
        labels = torch.nn.functional.one_hot(torch.randint(label_dim, (n,), generator=gen), label_dim).float()
    return x, sigma, labels


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_defaults_by_device() -> None:
    assert default_fast_path("cpu") == FP32 and FP32.is_plain
    cuda = default_fast_path("cuda")
    assert cuda.precision == "bf16" and cuda.compile and cuda.channels_last


def test_bad_settings_are_user_errors() -> None:
    with pytest.raises(SkiptuneError, match="precision 'fp8'"):
        FastPath(precision="fp8")  # type: ignore[arg-type]
    with pytest.raises(SkiptuneError, match="cuda_graphs"):
        FastPath(compile=False, cuda_graphs=True)
    with pytest.raises(SkiptuneError, match="not a denoiser"):
        prepare_denoiser(torch.nn.Linear(2, 2), compile=False)


@pytest.mark.parametrize("model_type, label_dim", [("SongUNet", 0), ("DhariwalUNet", 10)])
def test_fp32_path_equals_the_net(model_type: str, label_dim: int) -> None:
    net = tiny_precond(model_type, label_dim=label_dim, seed=3)
    fast = prepare_denoiser(net, precision="fp32", channels_last=False, compile=False)
    x, sigma, labels = _inputs(net, 3, seed=11)
    with torch.no_grad():
        assert torch.equal(fast(x, sigma, labels), net(x, sigma, labels))
    assert fast.img_resolution == net.img_resolution and fast.label_dim == label_dim


@pytest.mark.parametrize("model_type, label_dim", [("SongUNet", 0), ("DhariwalUNet", 10)])
def test_bf16_path_is_close(model_type: str, label_dim: int) -> None:
    net = tiny_precond(model_type, label_dim=label_dim, seed=5)
    x, sigma, labels = _inputs(net, 4, seed=12)
    with torch.no_grad():
        ref = net(x, sigma, labels)
        fast = prepare_denoiser(net, precision="bf16", compile=False)  # channels_last on
        out = fast(x, sigma, labels)
    assert out.dtype == torch.float32 and out.shape == x.shape and torch.isfinite(out).all()
    err = _rel(out, ref)
    assert 1e-5 < err < 2e-2  # really bf16 (not a silent fp32 run), yet close


def test_skip_tuning_works_through_the_wrapper() -> None:
    net = tiny_precond("SongUNet", seed=7)
    fast = prepare_denoiser(net, precision="fp32", channels_last=False, compile=False)
    assert find_adapter(fast) is find_adapter(net)
    x, sigma, _ = _inputs(net, 3, seed=13)
    schedule = SkipSchedule(rho_bottom=0.7, rho_top=1.2, sigma_window=(0.1, 50.0))
    with torch.no_grad():
        plain = net(x, sigma)
        with skip_tuning(net, schedule):
            expected = net(x, sigma)
        with skip_tuning(fast, schedule):
            assert net.model.skip_coefficients[0].item() == pytest.approx(0.7)
            got = fast(x, sigma)
        after = fast(x, sigma)
    assert torch.equal(got, expected) and not torch.equal(got, plain)
    assert torch.equal(after, plain)  # restored on exit


def test_rho_changes_do_not_recompile() -> None:
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    net = tiny_precond("DhariwalUNet", label_dim=10, seed=9)
    fast = prepare_denoiser(net, precision="bf16", backend=counter)
    x, sigma, labels = _inputs(net, 4, seed=14)
    assert labels is not None
    outs = []
    with torch.no_grad():
        for rho in [(1.0, 1.0), (0.8, 1.0), (1.3, 0.6)]:
            with skip_tuning(fast, SkipSchedule(rho_bottom=rho[0], rho_top=rho[1])):
                outs.append(fast(x, sigma, labels))
        fast(x[:3], sigma[:3], labels[:3])  # a smaller last batch is padded, not recompiled
    assert counter.frame_count == 1
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[1], outs[2])
    with torch.no_grad(), skip_tuning(net, SkipSchedule(rho_bottom=0.8, rho_top=1.0)):
        eager = prepare_denoiser(net, precision="bf16", compile=False)(x, sigma, labels)
    assert torch.allclose(outs[1], eager, rtol=0, atol=1e-6)  # the compiled graph reads the new buffer


def test_padded_last_batch_matches_unpadded_rows() -> None:
    net = tiny_precond("SongUNet", seed=4)
    fast = prepare_denoiser(net, precision="fp32", channels_last=False, backend="eager")
    x, sigma, _ = _inputs(net, 5, seed=15)
    with torch.no_grad():
        full = fast(x, sigma)
        part = fast(x[:2], sigma[:2])
    assert part.shape[0] == 2 and torch.allclose(part, full[:2], rtol=1e-5, atol=1e-5)


def test_sampler_runs_through_the_fast_path() -> None:
    net = tiny_precond("SongUNet", seed=2)
    ref = sample_batch(net, sampler="heun", nfe=5, seeds=range(3), device="cpu")
    fast = prepare_denoiser(net, precision="bf16", compile=False)
    got = sample_batch(fast, sampler="heun", nfe=5, seeds=range(3), device="cpu")
    # bf16 rounding compounds over 5 evaluations of a random (untrained, so less smooth) net
    assert torch.isfinite(got).all() and 1e-5 < _rel(got, ref) < 6e-2


def test_inference_and_normal_inputs_share_one_graph() -> None:
    """The sampler mixes inference tensors (x, sigma) with normal ones (labels): no second compile."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    net = tiny_precond("DhariwalUNet", label_dim=10, seed=8)
    fast = prepare_denoiser(net, precision="bf16", backend=counter)
    x, sigma, labels = _inputs(net, 4, seed=16)
    with torch.inference_mode():
        first = fast(x, sigma, labels)
        x2, sigma2 = x.clone(), sigma.clone()  # inference tensors now
        second = fast(x2, sigma2, labels)
    assert counter.frame_count == 1 and torch.equal(first, second)


def test_compiled_calls_run_without_the_custom_op_aliasing_check() -> None:
    from skiptune.nets.fast import _no_aliasing_check

    config = torch._functorch.config
    if not hasattr(config, "check_custom_op_aliasing"):
        pytest.skip("this torch has no custom-op aliasing check")
    seen = []
    wrapped = _no_aliasing_check(lambda *a: seen.append(config.check_custom_op_aliasing) or len(a))
    assert wrapped(1, 2) == 2
    assert seen == [False]
    assert config.check_custom_op_aliasing is True  # restored after the call
