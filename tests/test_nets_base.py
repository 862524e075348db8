"""The skip-tunable base: every family is built on it, says whether it has a sigma window, and the fast
path runs each family's backbone natively by what the network declares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from helpers import randomize_

from skiptune.errors import SkiptuneError
from skiptune.nets import base, edm
from skiptune.nets.base import SkipTunable, SkipTunableBackbone, SkipTunablePrecond, supports_sigma_window
from skiptune.nets.edm import EDMPrecond, SongUNet
from skiptune.nets.edm2 import EDM2Precond
from skiptune.nets.fast import FP32, FastPath, prepare_with
from skiptune.nets.precond import VEPrecond, VPPrecond
from skiptune.skips import SkipSchedule, skip_tuning

SONG: dict[str, Any] = dict(
    model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0
)
EDM2_TINY: dict[str, Any] = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])

FAMILIES: dict[str, Callable[[], SkipTunablePrecond]] = {
    "edm": lambda: EDMPrecond(8, 3, label_dim=4, model_type="SongUNet", **SONG),
    "vp": lambda: VPPrecond(8, 3, label_dim=4, **SONG),
    "ve": lambda: VEPrecond(8, 3, **SONG),
    "edm2": lambda: EDM2Precond(8, 3, 4, use_fp16=False, **EDM2_TINY),
}
WINDOW = SkipSchedule(rho_bottom=0.8, rho_top=1.1, sigma_window=(0.1, 5.0))


def family(name: str) -> SkipTunablePrecond:
    net = FAMILIES[name]()
    randomize_(net, seed=len(name))
    return net.eval()


def inputs(net: Any, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, net.img_channels, net.img_resolution, net.img_resolution, generator=gen)
    labels = None
    if net.label_dim:
        labels = torch.nn.functional.one_hot(torch.tensor([0, 3, 1]), net.label_dim).float()
    return x * 2, torch.tensor([0.05, 0.8, 12.0]), labels


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


class UserDenoiser(torch.nn.Module):
    """A denoiser skiptune knows nothing of: the contract's attributes and one convolution."""

    img_resolution = 8
    img_channels = 3
    label_dim = 0
    sigma_min = 0.002
    sigma_max = 80.0

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.autocast_seen: list[bool] = []

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: Any = None) -> torch.Tensor:
        self.autocast_seen.append(torch.is_autocast_enabled(x.device.type))
        return self.conv(x)


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_is_built_on_the_base(name: str) -> None:
    net = family(name)
    assert isinstance(net, SkipTunablePrecond) and isinstance(net, SkipTunable)
    assert isinstance(net.model, SkipTunableBackbone) and net.model.num_skips > 0
    assert net.skip_window.tolist() == [float("-inf"), float("inf")]
    # The names other code imports from edm are the base's own objects.
    assert edm.SkipTunablePrecond is base.SkipTunablePrecond and edm.BACKBONES is base.BACKBONES


@pytest.mark.parametrize("name", FAMILIES)
def test_native_families_support_a_sigma_window_also_through_the_fast_path(name: str) -> None:
    net = family(name)
    fast = prepare_with(net, FP32)
    assert supports_sigma_window(net) and supports_sigma_window(fast)
    x, sigma, labels = inputs(net)
    with torch.no_grad():
        plain = net(x, sigma, labels)
        with skip_tuning(fast, WINDOW):  # what the answer promises: the window applies
            tuned = fast(x, sigma, labels)
    inside = torch.tensor([False, True, False])
    assert torch.equal(tuned[~inside], plain[~inside]) and not torch.equal(tuned[inside], plain[inside])


def test_bare_backbones_and_other_nets_do_not_support_a_sigma_window() -> None:
    backbone = SongUNet(8, 3, 3, **SONG)
    user = UserDenoiser()
    for net in (backbone, user, prepare_with(user, FP32), torch.nn.Linear(2, 2), object()):
        assert not supports_sigma_window(net)
    with pytest.raises(SkiptuneError, match="sigma_window"), skip_tuning(backbone, WINDOW):
        pass


def test_a_declaration_without_the_window_buffer_is_not_enough() -> None:
    claims = UserDenoiser()
    claims.supports_sigma_window = True  # type: ignore[attr-defined]
    assert not supports_sigma_window(claims)


def test_the_diffusers_denoiser_does_not_support_a_sigma_window() -> None:
    diffusers = pytest.importorskip("diffusers")
    from skiptune.nets.diffusers import DiffusersDenoiser

    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000)
    net = DiffusersDenoiser(unet, alphas_cumprod=scheduler.alphas_cumprod, prediction_type="epsilon")
    assert not supports_sigma_window(net) and not supports_sigma_window(prepare_with(net, FP32))
    with pytest.raises(SkiptuneError, match="sigma_window"), skip_tuning(net, WINDOW):
        pass


@pytest.mark.parametrize("name", FAMILIES)
def test_fp32_fast_path_is_the_net_itself(name: str) -> None:
    net = family(name)
    x, sigma, labels = inputs(net, seed=1)
    with torch.no_grad():
        assert torch.equal(prepare_with(net, FP32)(x, sigma, labels), net(x, sigma, labels))


@pytest.mark.parametrize("name", FAMILIES)
def test_fast_path_runs_every_family_backbone_natively_in_bf16(name: str) -> None:
    net = family(name)
    x, sigma, labels = inputs(net, seed=2)
    with torch.no_grad():
        reference = net(x, sigma, labels)
    seen: list[tuple[torch.dtype, bool]] = []
    net.model.register_forward_pre_hook(
        lambda _m, args: seen.append((args[0].dtype, torch.is_autocast_enabled("cpu")))
    )
    fast = prepare_with(net, FastPath(precision="bf16", channels_last=True, compile=False))
    with torch.no_grad():
        out = fast(x, sigma, labels)
    assert seen == [(torch.bfloat16, False)]  # the backbone's own bf16, not autocast around fp32
    assert out.dtype == torch.float32 and 1e-5 < rel_err(out, reference) < 3e-2


def test_other_denoisers_run_under_autocast() -> None:
    user = UserDenoiser()
    x, sigma, _ = inputs(user)
    with torch.no_grad():
        out = prepare_with(user, FastPath(precision="bf16", channels_last=False, compile=False))(x, sigma)
    assert user.autocast_seen == [True] and out.dtype == torch.float32
