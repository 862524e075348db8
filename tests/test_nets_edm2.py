"""EDM2-compatible networks: parity with NVlabs/edm2, Skip-Tuning hooks, checkpoint loading.

Reference outputs come from EDM2's own code (tests/tools/make_edm2_reference.py writes
tests/data/edm2_*.pt). EDM2 pickles are written here the way ``torch_utils.persistence`` writes them
(records naming ``Precond``, ``UNet``, ... with the module source), and loaded without running it.
"""

from __future__ import annotations

import io
import math
import pickle
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import deterministic_parameters

from skiptune.errors import SkiptuneError
from skiptune.nets import edm2
from skiptune.nets.checkpoints import NETWORK_CLASSES, load_checkpoint, save_checkpoint
from skiptune.nets.edm2 import EDM2Precond, EDM2UNet
from skiptune.skips import SkipSchedule, find_adapter, skip_tuning

DATA = Path(__file__).parent / "data"
TINY_FILES = ["edm2_cond.pt", "edm2_uncond.pt"]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def load_reference(name: str) -> dict[str, Any]:
    return torch.load(DATA / name, weights_only=True)


def randomized(net: EDM2Precond, *, seed: int = 0) -> EDM2Precond:
    """Weights from ``deterministic_parameters``, scalar gains O(1) (EDM2 starts them at zero)."""
    shapes = {k: tuple(p.shape) for k, p in net.named_parameters()}
    values = deterministic_parameters(shapes, seed=seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(values[name] if p.ndim >= 2 else 0.8 + 0.5 * values[name])
    return net.eval()


def tiny(label_dim: int = 0, **overrides: Any) -> EDM2Precond:
    kwargs: dict[str, Any] = dict(
        img_resolution=16,
        img_channels=3,
        label_dim=label_dim,
        use_fp16=False,
        model_channels=16,
        channel_mult=[1, 2],
        num_blocks=1,
        attn_resolutions=[8],
        logvar_channels=8,
        channels_per_head=16,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the Fourier buffers
        return randomized(EDM2Precond(**{**kwargs, **overrides}))


def inputs(net: EDM2Precond, batch: int = 3, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    r, c = net.img_resolution, net.img_channels
    return torch.randn(batch, c, r, r, generator=gen), torch.exp(torch.randn(batch, generator=gen))


def run(net: torch.nn.Module, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    label_dim = int(getattr(net, "label_dim", 0))
    labels = torch.arange(x.shape[0]) % label_dim if label_dim else None
    with torch.no_grad():
        return net(x, sigma, labels)


# ---- parity with EDM2 ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY_FILES)
def test_outputs_match_edm2(name: str) -> None:
    ref = load_reference(name)
    net = EDM2Precond(**ref["config"]).eval()
    assert [(k, tuple(v.shape)) for k, v in net.state_dict().items()] == ref["state_shapes"]
    weights = deterministic_parameters(
        {k: s for k, s in ref["state_shapes"] if len(s) >= 2}, seed=ref["seed"]
    )
    net.load_state_dict({**weights, **ref["small_tensors"]}, strict=True)
    inp = ref["inputs"]
    with torch.no_grad():
        denoised, logvar = net(inp["x"], inp["sigma"], inp["class_labels"], return_logvar=True)
        sigma = inp["sigma"].reshape(-1, 1, 1, 1)
        c_in = 1 / (net.sigma_data**2 + sigma**2).sqrt()
        raw = net.unet(c_in * inp["x"], sigma.flatten().log() / 4, inp["class_labels"])
    assert ref["raw"].std() > 0.1 and ref["logvar"].std() > 0.1  # the reference is not degenerate
    assert rel_err(raw, ref["raw"]) <= 1e-5
    assert rel_err(denoised, ref["denoised"]) <= 1e-5
    assert rel_err(logvar, ref["logvar"]) <= 1e-5


def test_img64_s_matches_edm2_and_has_16_skips() -> None:
    full = load_reference("edm2_full_configs.pt")
    with torch.device("meta"):
        net = EDM2Precond(**full["config"])
    assert [(k, tuple(v.shape)) for k, v in net.state_dict().items()] == full["state_shapes"]
    # Encoder pushes every output: conv + 3 blocks at 64x64, then down + 3 blocks at 3 more levels.
    # A down block keeps the previous level's width: innermost first 3 x 768, 576 + 3 x 576, ...
    assert net.unet.num_skips == 16
    assert net.unet.skip_channels() == [768] * 3 + [576] * 4 + [384] * 4 + [192] * 5


def test_integer_labels_equal_one_hot_and_none_is_zero_label() -> None:
    net = tiny(label_dim=5)
    x, sigma = inputs(net)
    index = torch.tensor([4, 0, 2])
    with torch.no_grad():
        one_hot = net(x, sigma, torch.nn.functional.one_hot(index, 5).float())
        assert torch.equal(net(x, sigma, index), one_hot)
        assert torch.equal(net(x, sigma, None), net(x, sigma, torch.zeros(3, 5)))
        assert not torch.allclose(net(x, sigma, None), one_hot)


# ---- Skip-Tuning -------------------------------------------------------------------------------------


def record_skips(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Record the skip operand of every decoder ``mp_cat``, i.e. the (scaled) skip."""
    seen: list[torch.Tensor] = []
    real = edm2.mp_cat

    def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
        seen.append(b.clone())
        return real(a, b, dim=dim, t=t)

    monkeypatch.setattr(edm2, "mp_cat", mp_cat)
    return seen


def test_each_skip_gets_its_own_coefficient(monkeypatch: pytest.MonkeyPatch) -> None:
    net = tiny(label_dim=4, channel_mult=[1, 2, 2], attn_resolutions=[4])
    encoded: list[torch.Tensor] = []
    for module in net.unet.enc.values():
        module.register_forward_hook(lambda _m, _i, out: encoded.append(out.clone()))
    x, sigma = inputs(net)
    seen = record_skips(monkeypatch)
    run(net, x, sigma)
    plain = list(seen)
    assert len(plain) == len(encoded) == net.unet.num_skips == 6
    assert [s.shape[1] for s in plain] == net.unet.skip_channels()
    assert all(torch.equal(s, e) for s, e in zip(plain, reversed(encoded)))  # j = 0 innermost
    for j in range(net.unet.num_skips):
        coef = 0.5 + 0.1 * j
        net.unet.skip_coefficients.fill_(1.0)[j] = coef
        seen.clear()
        run(net, x, sigma)
        assert all(torch.equal(seen[i], plain[i]) for i in range(j))  # earlier skips untouched
        assert torch.equal(seen[j], plain[j] * torch.tensor(coef, dtype=torch.float32))


def bypassed(
    net: EDM2Precond, x: torch.Tensor, sigma: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> torch.Tensor:
    with monkeypatch.context() as m:
        m.setattr(EDM2UNet, "_scaled_skip", staticmethod(lambda skip, _f, _j: skip))
        return run(net, x, sigma)


def test_unit_coefficients_are_bit_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    net = tiny(label_dim=3)
    x, sigma = inputs(net, batch=4)
    reference = bypassed(net, x, sigma, monkeypatch)
    assert torch.equal(run(net, x, sigma), reference)
    net.skip_window.copy_(torch.tensor([0.5, 2.0]))
    assert torch.equal(run(net, x, sigma), reference)


def test_skip_window_selects_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    net = tiny()
    x, _ = inputs(net, batch=4)
    sigma = torch.tensor([0.1, 1.0, 5.0, 2.0])
    untuned = bypassed(net, x, sigma, monkeypatch)
    net.unet.skip_coefficients.copy_(torch.linspace(0.7, 1.3, net.unet.num_skips))
    net.skip_window.copy_(torch.tensor([0.5, 2.0]))  # inclusive: sigma 1.0 and 2.0 are inside
    tuned = run(net, x, sigma)
    for i, inside in enumerate([False, True, False, True]):
        if inside:
            assert rel_err(tuned[i], untuned[i]) > 1e-4
        else:
            assert torch.equal(tuned[i], untuned[i])


def test_skip_tuning_writes_and_restores_the_buffers() -> None:
    net = tiny()
    x, sigma = inputs(net)
    untuned = run(net, x, sigma)
    assert find_adapter(net).num_skips(net) == net.unet.num_skips == 4
    schedule = SkipSchedule(rho_bottom=1.2, rho_top=0.8, sigma_window=(0.5, 3.0))
    with skip_tuning(net, schedule):
        assert net.unet.skip_coefficients.tolist() == pytest.approx(schedule.coefficients(4))
        assert net.skip_window.tolist() == [0.5, 3.0]
        tuned = run(net, x, sigma)
    assert rel_err(tuned, untuned) > 1e-4
    assert torch.equal(run(net, x, sigma), untuned)
    assert net.model is net.unet  # the name EDMPrecond uses, without a second state-dict prefix
    assert not any(k.startswith("model.") for k in net.state_dict())


def test_samples_and_skip_tuning_through_the_fast_wrapper() -> None:
    from skiptune.nets.fast import FP32, prepare_with
    from skiptune.sampling import generate_images

    net = tiny(label_dim=3)
    fast = prepare_with(net, FP32)
    kw: dict[str, Any] = dict(sampler="heun", nfe=5, seeds=[0, 1], batch_size=2, device="cpu")
    plain = torch.cat(list(generate_images(net, **kw)))
    assert plain.dtype == torch.uint8 and plain.float().std() > 10
    assert torch.equal(torch.cat(list(generate_images(fast, **kw))), plain)
    with skip_tuning(fast, SkipSchedule(rho_bottom=0.5, rho_top=1.5)):
        assert net.unet.skip_coefficients.tolist() == pytest.approx([0.5, 0.5 + 1 / 3, 0.5 + 2 / 3, 1.5])
        tuned = torch.cat(list(generate_images(fast, **kw)))
    assert not torch.equal(tuned, plain)


@pytest.mark.parametrize(("precision", "tol"), [("bf16", 2e-2), ("fp16", 3e-3)])
def test_low_precision_fast_path_stays_close(precision: Any, tol: float) -> None:
    # Workers default to the bf16 fast path on CUDA; on the CPU the backbone runs natively in the same dtype.
    from skiptune.nets.fast import FastPath, prepare_with

    net = tiny(label_dim=4, channel_mult=[1, 2, 2], attn_resolutions=[4, 8])
    x, sigma = inputs(net)
    reference = run(net, x, sigma)
    fast = prepare_with(net, FastPath(precision=precision, channels_last=True, compile=False))
    out = run(fast, x, sigma)
    assert out.dtype == torch.float32
    assert 0 < rel_err(out, reference) <= tol  # > 0: the backbone really ran in low precision


def test_skip_buffers_are_not_persistent_and_contract_attributes() -> None:
    net = tiny()
    assert not any("skip_coefficients" in k or "skip_window" in k for k in net.state_dict())
    assert net.unet.skip_coefficients.dtype == torch.float32
    assert torch.equal(net.unet.skip_coefficients, torch.ones(net.unet.num_skips))
    assert net.skip_window.tolist() == [-math.inf, math.inf]
    assert (net.sigma_min, net.sigma_max, net.sigma_data) == (0.002, 80.0, 0.5)
    assert net.round_sigma(0.3).item() == pytest.approx(0.3)


def test_coefficient_change_does_not_recompile() -> None:
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    net = tiny(channel_mult=[1], img_resolution=8, attn_resolutions=[])
    compiled = torch.compile(net, backend=counter, fullgraph=True)
    x, sigma = inputs(net)
    with torch.no_grad():
        first = compiled(x, sigma)
        net.unet.skip_coefficients.fill_(0.8)
        net.skip_window.copy_(torch.tensor([0.5, 3.0]))
        second = compiled(x, sigma)
    assert counter.frame_count == 1
    assert not torch.equal(first, second)
    torch._dynamo.reset()


# ---- construction ------------------------------------------------------------------------------------


def test_use_fp16_is_ignored_on_cpu() -> None:
    net = tiny(use_fp16=True)
    x, sigma = inputs(net)
    out = run(net, x, sigma)
    assert out.dtype == torch.float32
    net.use_fp16 = False
    assert torch.equal(out, run(net, x, sigma))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(channel_mult=[1, 2, 2, 2, 2, 2]), "img_resolution=16"),
        (dict(channel_mult=[]), "channel_mult is empty"),
        (dict(encoder_type="skip"), "encoder_type"),
    ],
)
def test_bad_configuration_raises(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(SkiptuneError, match=match):
        EDM2Precond(img_resolution=16, img_channels=3, label_dim=0, **kwargs)


def test_save_checkpoint_round_trip(tmp_path: Path) -> None:
    net = tiny(label_dim=4, concat_balance=0.4, resample_filter=[1, 3, 3, 1])
    loaded = load_checkpoint(save_checkpoint(net, tmp_path / "net.pt"))
    assert type(loaded) is EDM2Precond
    x, sigma = inputs(net)
    assert torch.equal(run(loaded, x, sigma), run(net, x, sigma))


# ---- EDM2 pickles ------------------------------------------------------------------------------------

EDM2_NAMES = {EDM2Precond: "Precond", EDM2UNet: "UNet", edm2.EDM2Block: "Block"}
CONTAINERS = (torch.nn.ModuleDict, torch.nn.ModuleList, torch.nn.Sequential)
OURS_ONLY = ("init_kwargs", "_skip_channels", "num_skips")  # attributes EDM2's classes do not have


class FakeLoss:
    """Stands in for EDM2's ``EDM2Loss``: a persistent object that is not a module."""

    def __init__(self) -> None:
        self.P_mean, self.P_std = -0.8, 1.6


@pytest.fixture
def fake_edm2_modules() -> Iterator[Any]:
    """Stand-ins for ``torch_utils.persistence`` (its reconstruct runs ``module_src``, like EDM2's) and
    ``dnnlib.util.EasyDict``; installed while the test writes its pickle, removed before loading."""

    def reconstruct(meta: dict[str, Any]) -> Any:
        exec(meta["module_src"], {})
        return None

    reconstruct.__module__ = "torch_utils.persistence"
    reconstruct.__qualname__ = reconstruct.__name__ = "_reconstruct_persistent_obj"
    easy_dict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    mods = {
        name: types.ModuleType(name)
        for name in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")
    }
    mods["torch_utils.persistence"]._reconstruct_persistent_obj = reconstruct  # type: ignore[attr-defined]
    mods["dnnlib.util"].EasyDict = easy_dict  # type: ignore[attr-defined]
    sys.modules.update(mods)
    yield reconstruct, easy_dict
    for name in mods:
        sys.modules.pop(name, None)


def edm2_state(item: torch.nn.Module) -> dict[str, Any]:
    """The ``__dict__`` EDM2's class would pickle: without our skip buffers and bookkeeping."""
    state = {k: v for k, v in item.__dict__.items() if k not in OURS_ONLY}
    transient = set(state.get("_non_persistent_buffers_set", ()))
    state["_buffers"] = {k: v for k, v in state["_buffers"].items() if k not in transient}
    state["_non_persistent_buffers_set"] = set()
    return state


def edm2_pickle(
    data: Any, net: torch.nn.Module, kwargs: dict[str, Any], reconstruct: Any, marker: Path
) -> bytes:
    src = f"open({str(marker)!r}, 'w').write('module_src was executed')\n"

    class EDM2Pickler(pickle.Pickler):
        def reducer_override(self, item: Any) -> Any:
            if isinstance(item, FakeLoss):
                name, state = "EDM2Loss", dict(item.__dict__)
            elif isinstance(item, torch.nn.Module) and not isinstance(item, CONTAINERS):
                name, state = EDM2_NAMES.get(type(item), type(item).__name__), edm2_state(item)
            else:
                return NotImplemented
            state["_init_args"], state["_init_kwargs"] = (), (dict(kwargs) if item is net else {})
            meta = dict(type="class", version=6, module_src=src, class_name=name, state=state)
            return reconstruct, (meta,)

    buf = io.BytesIO()
    EDM2Pickler(buf, protocol=4).dump(data)
    return buf.getvalue()


def test_edm2_pickle_loads_without_running_its_code(tmp_path: Path, fake_edm2_modules: Any) -> None:
    reconstruct, easy_dict = fake_edm2_modules
    kwargs: dict[str, Any] = dict(
        img_resolution=16,
        img_channels=3,
        label_dim=4,
        logvar_channels=8,
        model_channels=16,
        channel_mult=[1, 2],
        num_blocks=1,
        attn_resolutions=[8],
        channels_per_head=16,
        dropout=0.0,
        use_fp16=True,
    )
    net = tiny(**kwargs)
    ema = EDM2Precond(**kwargs).eval().requires_grad_(False)
    ema.load_state_dict(net.state_dict())
    ema.to(torch.float16)  # EDM2 snapshots store the EMA weights (and buffers) in float16
    marker = tmp_path / "marker"
    data = easy_dict(encoder=torch.nn.Identity(), dataset_kwargs={"path": "x"}, loss_fn=FakeLoss(), ema=ema)
    blob = edm2_pickle(data, ema, kwargs, reconstruct, marker)
    assert b"Precond" in blob and b"EDM2Precond" not in blob

    pickle.loads(blob)  # the oracle: plain pickle *does* execute module_src
    assert marker.exists()
    marker.unlink()
    for name in ("torch_utils.persistence", "torch_utils", "dnnlib.util", "dnnlib"):
        sys.modules.pop(name)  # nothing of EDM2's is importable while loading

    path = tmp_path / "network-snapshot-0000000-0.100.pkl"
    path.write_bytes(blob)
    loaded = load_checkpoint(path)
    assert not marker.exists()
    assert type(loaded) is EDM2Precond and NETWORK_CLASSES.get("Precond") is EDM2Precond
    assert not loaded.training and loaded.unet.skip_coefficients.dtype == torch.float32
    with torch.no_grad():
        rounded = net.half().float()  # the values the float16 snapshot holds
    x, sigma = inputs(net)
    assert torch.equal(run(loaded, x, sigma), run(rounded, x, sigma))
    with skip_tuning(loaded, SkipSchedule(rho_bottom=1.1, rho_top=0.9)):
        assert not torch.equal(run(loaded, x, sigma), run(rounded, x, sigma))
