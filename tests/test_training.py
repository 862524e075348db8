"""The demo model's recipe: EDM loss, EMA, a short training run, fp16 checkpoints, lazy imports."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from skiptune.demo.training.classifier import random_shift
from skiptune.demo.training.data import random_xflip, to_unit_range
from skiptune.demo.training.diffusion import (
    DiffusionTrainConfig,
    UNetConfig,
    build_net,
    save_ema_checkpoint,
    train_diffusion,
)
from skiptune.demo.training.edm_loss import EDMLoss
from skiptune.demo.training.ema import ema_beta, ema_update

TINY = UNetConfig(model_channels=8, channel_mult=(1, 1), num_blocks=1, attn_resolutions=(), dropout=0.0)


class ToyDenoiser(nn.Module):
    """A non-linear stand-in for D(x; sigma) with learnable weights."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(1, 3, 1, 1))

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        return torch.tanh(self.a * x) / (1 + sigma.reshape(-1, 1, 1, 1))


def test_edm_loss_matches_independent_formula() -> None:
    g = torch.Generator().manual_seed(1)
    y = torch.rand(6, 3, 8, 8, generator=g) * 2 - 1
    sigma = torch.rand(6, 1, 1, 1, generator=g) * 5 + 0.01
    noise = torch.randn(6, 3, 8, 8, generator=g)
    net = ToyDenoiser()
    loss = EDMLoss(sigma_data=0.5)(net, y, sigma=sigma, noise=noise)
    # lambda(sigma) = (s^2 + sd^2) / (s sd)^2 = 1/sd^2 + 1/s^2 (Karras et al. 2022, Table 1)
    weight = 1 / 0.5**2 + 1 / sigma.double() ** 2
    x = y.double() + sigma.double() * noise.double()
    d = torch.tanh(net.a.double() * x) / (1 + sigma.double())
    expected = weight * (d - y.double()) ** 2
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


def test_edm_sigma_is_log_normal() -> None:
    torch.manual_seed(2)
    log_sigma = EDMLoss(P_mean=-1.2, P_std=1.2).sample_sigma(40_000, device=torch.device("cpu")).log()
    assert abs(float(log_sigma.mean()) + 1.2) < 0.03
    assert abs(float(log_sigma.std()) - 1.2) < 0.03


def test_ema_beta_half_life_and_rampup() -> None:
    # after halflife/batch steps at constant beta the old weights' share is exactly 1/2
    beta = ema_beta(batch_size=100, images_seen=10**9, halflife_images=5000, rampup_ratio=0.05)
    assert beta ** (5000 / 100) == pytest.approx(0.5)
    # early on the half-life is capped at ratio * images seen
    early = ema_beta(batch_size=100, images_seen=4000, halflife_images=5000, rampup_ratio=0.05)
    assert early == pytest.approx(0.5 ** (100 / 200))
    assert ema_beta(
        batch_size=100, images_seen=4000, halflife_images=5000, rampup_ratio=None
    ) == pytest.approx(beta)


def test_ema_update_is_the_convex_combination() -> None:
    torch.manual_seed(3)
    net, ema = nn.Linear(5, 4), nn.Linear(5, 4)
    before = [p.detach().clone() for p in ema.parameters()]
    ema_update(ema, net, beta=0.7)
    for old, new, cur in zip(before, ema.parameters(), net.parameters()):
        torch.testing.assert_close(new, 0.7 * old + 0.3 * cur.detach())


def test_data_transforms() -> None:
    g = torch.Generator().manual_seed(4)
    images = torch.randint(0, 256, (16, 1, 32, 32), dtype=torch.uint8, generator=g)
    x = to_unit_range(images)
    assert x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(x[images == 255], torch.ones_like(x[images == 255]))
    flipped = random_xflip(images, generator=g)
    for a, b in zip(images, flipped):
        assert torch.equal(a, b) or torch.equal(a.flip(-1), b)
    shifted = random_shift(images, max_shift=2, generator=g)
    padded = nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(16):
        crops = [padded[i, :, r : r + 32, c : c + 32] for r in range(5) for c in range(5)]
        assert any(torch.equal(shifted[i], crop) for crop in crops)


def _fixed_batch_loss(
    net: nn.Module, images: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor
) -> float:
    with torch.no_grad():
        return float(EDMLoss()(net.eval(), to_unit_range(images), sigma=sigma, noise=noise).mean())


def test_a_few_training_steps_reduce_the_loss() -> None:
    g = torch.Generator().manual_seed(5)
    # a shared random pattern plus small per-image noise: learnable in a few steps, unlike pure noise
    pattern = torch.rand(1, 1, 32, 32, generator=g) * 200
    images = (pattern + torch.rand(4, 1, 32, 32, generator=g) * 40).to(torch.uint8)
    sigma = EDMLoss().sample_sigma(4, device=torch.device("cpu"), generator=g)
    noise = torch.randn(4, 1, 32, 32, generator=g)
    config = DiffusionTrainConfig(
        unet=TINY,
        steps=80,
        batch_size=4,
        lr=1e-2,
        lr_warmup_images=0,
        ema_halflife_images=1,
        xflip=False,
        seed=0,
        log_every=20,
    )
    torch.manual_seed(config.seed)
    initial = build_net(TINY)  # the very initialisation train_diffusion starts from (same seed)
    result = train_diffusion(images, config=config, device=torch.device("cpu"))
    assert result.steps == 80 and result.images_seen == 320
    before = _fixed_batch_loss(initial, images, sigma, noise)
    after = _fixed_batch_loss(result.ema, images, sigma, noise)
    assert after < 0.95 * before  # F starts at ~0 (zero-init output), so it moves slowly, (before, after)
    assert all(math.isfinite(e["loss"]) for e in result.losses)


def test_max_seconds_stops_training() -> None:
    images = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    config = DiffusionTrainConfig(unet=TINY, steps=10_000, max_seconds=0.0, batch_size=2, seed=0)
    assert train_diffusion(images, config=config, device=torch.device("cpu")).steps == 1


def test_fp16_checkpoint_round_trip(tmp_path) -> None:
    from skiptune.nets.checkpoints import load_checkpoint

    torch.manual_seed(6)
    net = build_net(TINY)
    path = save_ema_checkpoint(net, tmp_path / "tiny.pt", unet=TINY)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert payload["format"] == "skiptune" and payload["config"]["model_channels"] == 8
    assert all(v.dtype == torch.float16 for v in payload["state_dict"].values() if v.is_floating_point())
    loaded = load_checkpoint(path)
    expected = {k: v.half().float() for k, v in net.state_dict().items()}
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v.float(), expected[k], rtol=0, atol=0)
    x, s = torch.randn(2, 1, 32, 32), torch.tensor([0.5, 3.0])
    net.load_state_dict(expected)
    torch.testing.assert_close(loaded(x, s), net.eval()(x, s))


def test_training_entry_point_imports_no_service_dependencies() -> None:
    code = (
        "import sys\n"
        "import skiptune.demo.training.__main__, skiptune.demo.training.commands\n"
        "import skiptune.demo.training.diffusion, skiptune.demo.training.classifier\n"
        "import skiptune.demo.training.reference_stats, skiptune.demo.training.evaluate\n"
        "import skiptune.demo.training.options, skiptune.cli.train_cmd\n"
        "bad = [m for m in ('optuna', 'sqlalchemy', 'torch_fidelity', 'torchvision') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_step_log_means_each_span_and_stops_at_steps_or_seconds() -> None:
    from skiptune.demo.training.steps import StepLog

    seen: list[dict] = []
    steps = StepLog(steps=5, max_seconds=None, log_every=2, log=seen.append, names=("loss", "mse"))
    stopped = [steps.add(torch.tensor(float(i)), torch.tensor(10.0 * i), images=8 * i) for i in range(1, 6)]
    assert stopped == [False, False, False, False, True] and not steps.running()
    assert [(e["step"], e["images"], e["loss"], e["mse"]) for e in seen] == [
        (2, 16, 1.5, 15.0), (4, 32, 3.5, 35.0), (5, 40, 5.0, 50.0),  # the last span: its one step
    ]  # fmt: skip
    assert seen == steps.entries and list(seen[0]) == ["step", "images", "seconds", "loss", "mse"]
    timed = StepLog(steps=10**9, max_seconds=0.0, log_every=100)
    assert timed.add(torch.tensor(1.0)) and timed.entries[0]["step"] == 1  # out of time: stops, logs
