"""Skip-Tuning transform: schedule math, native EDM nets, diffusers UNets, user hooks, torch.compile."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from helpers import tiny_precond

from skiptune.errors import SkiptuneError
from skiptune.skips import (
    SKIP_ADAPTERS,
    HookSkipAdapter,
    SkipPoint,
    SkipSchedule,
    apply_skip_schedule,
    find_adapter,
    skip_tuning,
)

# ---- schedule math ---------------------------------------------------------------------------------


@pytest.mark.parametrize("num_skips", [2, 3, 7, 16])
def test_coefficients_are_linear_from_bottom_to_top(num_skips: int) -> None:
    rng = np.random.default_rng(num_skips)
    for _ in range(5):
        bottom, top = rng.uniform(0.5, 1.5, size=2)
        got = SkipSchedule(rho_bottom=bottom, rho_top=top).coefficients(num_skips)
        np.testing.assert_allclose(got, np.linspace(bottom, top, num_skips), rtol=0, atol=1e-12)
        assert got[0] == bottom and math.isclose(got[-1], top, abs_tol=1e-15)


def test_single_skip_gets_rho_bottom() -> None:
    assert SkipSchedule(rho_bottom=0.7, rho_top=1.3).coefficients(1) == [0.7]


def test_identity_and_dict_round_trip() -> None:
    assert SkipSchedule().is_identity and SkipSchedule(1, 1).coefficients(4) == [1.0] * 4
    assert not SkipSchedule(rho_bottom=1.0, rho_top=0.99).is_identity
    sched = SkipSchedule(rho_bottom=1.2, rho_top=0.8, sigma_window=(0.1, math.inf))
    assert SkipSchedule.from_dict(sched.to_dict()) == sched
    assert SkipSchedule.from_dict({"rho_top": 0.9}) == SkipSchedule(rho_top=0.9)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(rho_bottom=math.nan), dict(rho_top=math.inf), dict(rho_bottom="x"), dict(rho_top=True),
        dict(sigma_window=(2.0, 1.0)), dict(sigma_window=(-0.1, 1.0)), dict(sigma_window=(math.nan, 1.0)),
        dict(sigma_window=(1.0,)), dict(sigma_window=(math.inf, math.inf)),
    ],
)
def test_invalid_schedules_raise(kwargs: dict[str, Any]) -> None:
    with pytest.raises(SkiptuneError):
        SkipSchedule(**kwargs)


def test_from_dict_rejects_unknown_keys_and_bad_counts() -> None:
    with pytest.raises(SkiptuneError, match="rho_botom"):
        SkipSchedule.from_dict({"rho_botom": 1.0})
    with pytest.raises(SkiptuneError):
        SkipSchedule().coefficients(0)


# ---- native EDM nets -------------------------------------------------------------------------------


def record_skips(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Record the second operand of every 4-D two-tensor torch.cat: the skip the decoder appends."""
    seen: list[torch.Tensor] = []
    real_cat = torch.cat

    def cat(tensors: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        if isinstance(tensors, (list, tuple)) and len(tensors) == 2 and tensors[0].ndim == 4:
            seen.append(tensors[1].detach().clone())
        return real_cat(tensors, *args, **kwargs)

    monkeypatch.setattr(torch, "cat", cat)
    return seen


def edm_inputs(net: Any, batch: int = 3, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, net.img_channels, net.img_resolution, net.img_resolution, generator=gen)
    return x, torch.exp(torch.randn(batch, generator=gen))


@pytest.mark.parametrize("model_type", ["SongUNet", "DhariwalUNet"])
def test_skip_tuning_gives_each_skip_its_coefficient(
    model_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = tiny_precond(model_type)
    x, sigma = edm_inputs(net)
    seen = record_skips(monkeypatch)
    with torch.no_grad():
        net(x, sigma)
        plain = list(seen)
        seen.clear()
        sched = SkipSchedule(rho_bottom=1.3, rho_top=0.6)
        with skip_tuning(net, sched):
            net(x, sigma)
    coefs = sched.coefficients(net.model.num_skips)
    assert len(seen) == len(plain) == net.model.num_skips == find_adapter(net).num_skips(net)
    for j, (skip, ref) in enumerate(zip(seen, plain)):
        assert torch.equal(skip, ref * torch.tensor(coefs[j], dtype=torch.float32)), j


def test_restore_is_exact_and_identity_is_bit_identical() -> None:
    net = tiny_precond("SongUNet")
    x, sigma = edm_inputs(net)
    with torch.no_grad():
        before = net(x, sigma)
        with skip_tuning(net, SkipSchedule(1.0, 1.0)):
            assert torch.equal(net(x, sigma), before)
        with skip_tuning(net, SkipSchedule(0.8, 1.2)):
            assert not torch.allclose(net(x, sigma), before)
        assert torch.equal(net(x, sigma), before)
    assert torch.equal(net.model.skip_coefficients, torch.ones(net.model.num_skips))
    assert torch.equal(net.skip_window, torch.tensor([-math.inf, math.inf]))


def test_restore_on_exception_and_nested_schedules() -> None:
    net = tiny_precond("SongUNet")
    outer = SkipSchedule(0.9, 1.1, sigma_window=(0.5, 2.0))
    outer_coefs = torch.tensor(outer.coefficients(net.model.num_skips), dtype=torch.float32)
    with skip_tuning(net, outer):
        with pytest.raises(RuntimeError), skip_tuning(net, SkipSchedule(1.4, 0.5)):
            raise RuntimeError("boom")
        assert torch.equal(net.model.skip_coefficients, outer_coefs)
        assert torch.equal(net.skip_window, torch.tensor([0.5, 2.0]))
        handle = apply_skip_schedule(net, SkipSchedule(1.4, 0.5))  # window None -> all sigmas
        assert torch.equal(net.skip_window, torch.tensor([-math.inf, math.inf]))
        handle.restore()
        handle.restore()  # idempotent
        assert torch.equal(net.model.skip_coefficients, outer_coefs)
    assert torch.equal(net.model.skip_coefficients, torch.ones(net.model.num_skips))


def test_buffers_are_written_in_place() -> None:
    net = tiny_precond("SongUNet")
    coef_ptr, window_ptr = net.model.skip_coefficients.data_ptr(), net.skip_window.data_ptr()
    with skip_tuning(net, SkipSchedule(0.7, 1.2, sigma_window=(0.1, 5.0))):
        assert net.model.skip_coefficients.data_ptr() == coef_ptr
        assert net.skip_window.data_ptr() == window_ptr


def test_sigma_window_tunes_only_samples_inside() -> None:
    net = tiny_precond("SongUNet")
    x, _ = edm_inputs(net, batch=4)
    sigma = torch.tensor([0.05, 0.8, 3.0, 40.0])
    inside = (sigma >= 0.5) & (sigma <= 5.0)
    with torch.no_grad():
        plain = net(x, sigma)
        with skip_tuning(net, SkipSchedule(0.6, 1.4, sigma_window=(0.5, 5.0))):
            windowed = net(x, sigma)
        with skip_tuning(net, SkipSchedule(0.6, 1.4)):
            everywhere = net(x, sigma)
    assert torch.equal(windowed[~inside], plain[~inside])
    assert torch.equal(windowed[inside], everywhere[inside])
    assert not torch.allclose(windowed[inside], plain[inside])


def test_sigma_window_on_bare_backbone_is_refused() -> None:
    backbone = tiny_precond("SongUNet").model
    with pytest.raises(SkiptuneError, match="bare backbone"):
        apply_skip_schedule(backbone, SkipSchedule(0.9, 1.1, sigma_window=(0.1, 1.0)))
    with skip_tuning(backbone, SkipSchedule(0.9, 1.1)):  # without a window it works on the backbone
        assert backbone.skip_coefficients[0].item() == pytest.approx(0.9)


def test_unknown_net_names_type_and_how_to_register() -> None:
    with pytest.raises(SkiptuneError, match=r"torch\.nn\.modules\.linear\.Linear.*HookSkipAdapter"):
        apply_skip_schedule(torch.nn.Linear(2, 2), SkipSchedule(0.9, 1.1))


def test_changing_schedule_does_not_recompile() -> None:
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    net = tiny_precond("SongUNet").requires_grad_(False)
    x, sigma = edm_inputs(net, batch=2)
    counter = CompileCounter()
    compiled = torch.compile(net, backend=counter)
    with torch._dynamo.config.patch(error_on_recompile=True):
        with skip_tuning(net, SkipSchedule(0.7, 1.2)):
            out_a = compiled(x, sigma)
        frames = counter.frame_count
        with skip_tuning(net, SkipSchedule(1.3, 0.9, sigma_window=(0.0, 100.0))):
            out_b = compiled(x, sigma)
    assert frames >= 1 and counter.frame_count == frames
    with torch.no_grad(), skip_tuning(net, SkipSchedule(1.3, 0.9)):
        assert torch.allclose(out_b, net(x, sigma), atol=1e-5)
    assert not torch.allclose(out_a, out_b)
    torch._dynamo.reset()


# ---- user adapter (forward hooks) ------------------------------------------------------------------


class ToyUNet(torch.nn.Module):
    """Two long skips; ``factors`` in forward is an independent reference for the scaling."""

    class Merge(torch.nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(2 * channels, channels, 1)

        def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
            return self.conv(torch.cat([x, skip], dim=1))

    def __init__(self) -> None:
        super().__init__()
        self.enc0, self.enc1, self.mid = (torch.nn.Conv2d(2, 2, 3, padding=1) for _ in range(3))
        self.skip1 = torch.nn.Identity()  # on the skip path only: "output" skip point
        self.dec0, self.dec1 = ToyUNet.Merge(2), ToyUNet.Merge(2)

    def forward(self, x: torch.Tensor, factors: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
        h0 = self.enc0(x)
        h1 = self.enc1(h0)
        y = self.dec0(self.mid(h1), skip=self.skip1(h1) * factors[0])  # innermost, consumed first
        return self.dec1(y, h0 * factors[1])


def test_hook_adapter_scales_listed_points() -> None:
    torch.manual_seed(0)
    net = ToyUNet().eval()
    x = torch.randn(2, 2, 8, 8)
    points = [SkipPoint("skip1", where="output"), SkipPoint("dec1", arg=1)]
    adapter = HookSkipAdapter(net_type=ToyUNet, points=points)
    assert adapter.num_skips(net) == 2
    SKIP_ADAPTERS.register("toy-unet-test", adapter, replace=True)
    sched = SkipSchedule(rho_bottom=1.25, rho_top=0.5)
    with torch.no_grad():
        plain = net(x)
        with skip_tuning(net, sched):
            tuned = net(x)
        assert torch.allclose(tuned, net(x, factors=(1.25, 0.5)), atol=1e-6)
        assert torch.equal(net(x), plain)  # hooks removed
    keyword = HookSkipAdapter(
        net_type=lambda n: isinstance(n, ToyUNet), points=[SkipPoint("dec0", arg="skip")]
    )
    with torch.no_grad():
        reference = net(x, factors=(0.5, 1.0))
        handle = keyword.apply(net, SkipSchedule(rho_bottom=0.5))
        assert torch.allclose(net(x), reference, atol=1e-6)
        handle.restore()
    with pytest.raises(SkiptuneError, match="not a submodule"):
        HookSkipAdapter(net_type=ToyUNet, points=[SkipPoint("nope")]).apply(net, sched)


# ---- diffusers -------------------------------------------------------------------------------------

diffusers = pytest.importorskip("diffusers")


def tiny_unet2d() -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=8,
    ).eval()


def tiny_unet2d_condition() -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, norm_num_groups=4, attention_head_dim=2,
    ).eval()


def count_down_samples(unet: Any) -> int:
    """len(down_block_res_samples) from the encoder's structure: conv_in + resnets + downsamplers."""
    return 1 + sum(len(b.resnets) + (1 if b.downsamplers else 0) for b in unet.down_blocks)


def run_unet(unet: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    t = torch.tensor([37.0] * x.shape[0])
    if isinstance(unet, diffusers.UNet2DConditionModel):
        ctx = torch.randn(x.shape[0], 4, 8, generator=torch.Generator().manual_seed(1))
        return unet(x, t, encoder_hidden_states=ctx).sample
    return unet(x, t).sample


@pytest.mark.parametrize("factory", [tiny_unet2d, tiny_unet2d_condition])
def test_diffusers_each_skip_gets_its_coefficient(factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    unet = factory()
    size = unet.config.sample_size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    adapter = find_adapter(unet)
    assert adapter.num_skips(unet) == count_down_samples(unet)
    seen = record_skips(monkeypatch)
    sched = SkipSchedule(rho_bottom=1.4, rho_top=0.7)
    with torch.no_grad():
        plain_out = run_unet(unet, x)
        plain = list(seen)
        seen.clear()
        with skip_tuning(unet, sched):
            tuned_out = run_unet(unet, x)
        tuned = list(seen)
        seen.clear()
        assert torch.equal(run_unet(unet, x), plain_out)  # restored
    coefs = sched.coefficients(count_down_samples(unet))
    assert len(tuned) == len(plain) == len(coefs)
    for j, (skip, ref) in enumerate(zip(tuned, plain)):
        assert torch.equal(skip, ref * coefs[j]), j
    assert not torch.allclose(tuned_out, plain_out)


def test_diffusers_identity_is_bit_identical_and_window_refused() -> None:
    unet = tiny_unet2d()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        plain = run_unet(unet, x)
        with skip_tuning(unet, SkipSchedule()):
            assert torch.equal(run_unet(unet, x), plain)
    with pytest.raises(SkiptuneError, match="sigma_window is not supported"):
        apply_skip_schedule(unet, SkipSchedule(0.9, 1.1, sigma_window=(0.1, 1.0)))
