"""EDM's VP / VE preconditioning: parity with NVlabs/edm, Skip-Tuning, checkpoints and sampling.

Reference outputs come from EDM's own code (tests/tools/make_precond_reference.py writes
tests/data/precond_vp_ve.pt).
"""

from __future__ import annotations

import inspect
import io
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import deterministic_parameters, randomize_

from skiptune.errors import SkiptuneError
from skiptune.nets import VEPrecond, VPPrecond
from skiptune.nets.checkpoints import load_checkpoint, save_checkpoint
from skiptune.nets.edm import SkipTunableBackbone
from skiptune.sampling import generate_images
from skiptune.sampling.schedule import EDMSchedule
from skiptune.skips import SkipSchedule, skip_tuning

REFERENCE = Path(__file__).parent / "data" / "precond_vp_ve.pt"
CLASSES: dict[str, type[VPPrecond] | type[VEPrecond]] = {"VPPrecond": VPPrecond, "VEPrecond": VEPrecond}
TINY: dict[str, Any] = dict(
    model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0
)

Precond = VPPrecond | VEPrecond


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return torch.load(REFERENCE, weights_only=False)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def our_net(ref: dict[str, Any]) -> Precond:
    net = CLASSES[ref["class_name"]](**ref["config"]).eval()
    shapes = {k: tuple(p.shape) for k, p in net.named_parameters()}
    assert list(shapes) == ref["param_keys"]
    buffers = {k: v for k, v in net.state_dict().items() if k not in shapes}
    assert buffers.keys() == ref["buffers"].keys()
    # Resample filters must agree; Fourier frequencies are random at init, so EDM's are loaded.
    assert all(torch.equal(v, ref["buffers"][k]) for k, v in buffers.items() if not k.endswith(".freqs"))
    net.load_state_dict({**deterministic_parameters(shapes, seed=ref["seed"]), **ref["buffers"]}, strict=True)
    return net


def tiny(cls: type[Precond], *, label_dim: int = 0, seed: int = 3, **kwargs: Any) -> Precond:
    net = cls(img_resolution=8, img_channels=3, label_dim=label_dim, **TINY, **kwargs)
    return randomize_(net, seed=seed).eval()  # type: ignore[return-value]


def inputs(net: Precond, sigma: list[float], seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(sigma), net.img_channels, net.img_resolution, net.img_resolution, generator=gen)
    return x, torch.tensor(sigma)


def run(net: Precond, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(x, sigma)


def bypassed(
    net: Precond, x: torch.Tensor, sigma: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> torch.Tensor:
    """The output with every skip passed through untouched (the untuned network)."""
    with monkeypatch.context() as m:
        m.setattr(SkipTunableBackbone, "_scaled_skip", staticmethod(lambda skip, _f, _j: skip))
        return run(net, x, sigma)


# ---- parity with EDM -------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["vp", "ve"])
def test_outputs_and_keys_match_edm(key: str, reference: dict[str, Any]) -> None:
    ref = reference[key]
    net = our_net(ref)
    assert [(k, tuple(v.shape)) for k, v in net.state_dict().items()] == ref["state_shapes"]
    assert (net.sigma_min, net.sigma_max) == (ref["sigma_min"], ref["sigma_max"])
    inp = ref["inputs"]
    kw = {} if inp["augment_labels"] is None else {"augment_labels": inp["augment_labels"]}
    with torch.no_grad():
        out = net(inp["x"], inp["sigma"], inp["class_labels"], **kw)
    assert rel_err(out, ref["denoised"]) <= 1e-5
    if inp["class_labels"] is not None:  # integer labels mean the same one-hot labels
        with torch.no_grad():
            by_index = net(inp["x"], inp["sigma"], inp["class_labels"].argmax(1), **kw)
        assert torch.equal(by_index, out)


def test_defaults_match_edm(reference: dict[str, Any]) -> None:
    expected = {
        VPPrecond: dict(
            label_dim=0,
            use_fp16=False,
            beta_d=19.9,
            beta_min=0.1,
            M=1000,
            epsilon_t=1e-5,
            model_type="SongUNet",
        ),
        VEPrecond: dict(label_dim=0, use_fp16=False, sigma_min=0.02, sigma_max=100, model_type="SongUNet"),
    }
    for cls, defaults in expected.items():
        params = inspect.signature(cls).parameters
        assert {k: p.default for k, p in params.items() if p.default is not p.empty} == defaults
        net = cls(
            img_resolution=4,
            img_channels=1,
            model_channels=8,
            channel_mult=[1],
            num_blocks=1,
            attn_resolutions=[],
        )
        assert (net.sigma_min, net.sigma_max) == reference["defaults"][cls.__name__]


def test_vp_sigma_inv_inverts_sigma() -> None:
    net = tiny(VPPrecond)
    assert isinstance(net, VPPrecond)
    t = torch.rand(50, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.99 + 0.01
    assert torch.allclose(net.sigma_inv(net.sigma(t)), t, rtol=1e-10, atol=0)


def test_init_kwargs_recorded() -> None:
    net = tiny(VPPrecond, label_dim=2, beta_min=0.2, model_type="SongUNet")
    assert net.init_kwargs == dict(
        img_resolution=8,
        img_channels=3,
        label_dim=2,
        use_fp16=False,
        beta_d=19.9,
        beta_min=0.2,
        M=1000,
        epsilon_t=1e-5,
        model_type="SongUNet",
        **TINY,
    )
    ve = tiny(VEPrecond, sigma_max=50.0)
    assert ve.init_kwargs == dict(
        img_resolution=8,
        img_channels=3,
        label_dim=0,
        use_fp16=False,
        sigma_min=0.02,
        sigma_max=50.0,
        model_type="SongUNet",
        **TINY,
    )


def test_bad_backbone_keywords_raise() -> None:
    with pytest.raises(SkiptuneError, match="does not accept"):
        VEPrecond(img_resolution=8, img_channels=3, no_such_keyword=1)


# ---- Skip-Tuning -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [VPPrecond, VEPrecond])
def test_unit_coefficients_are_bit_identical(cls: type[Precond], monkeypatch: pytest.MonkeyPatch) -> None:
    net = tiny(cls)
    x, sigma = inputs(net, [0.05, 0.7, 3.0, 20.0])
    untuned = bypassed(net, x, sigma, monkeypatch)
    with skip_tuning(net, SkipSchedule(rho_bottom=1.0, rho_top=1.0, sigma_window=(0.5, 5.0))):
        assert torch.equal(run(net, x, sigma), untuned)
    assert torch.equal(run(net, x, sigma), untuned)


@pytest.mark.parametrize("cls", [VPPrecond, VEPrecond])
def test_skip_window_selects_samples_by_sigma(cls: type[Precond], monkeypatch: pytest.MonkeyPatch) -> None:
    net = tiny(cls)
    x, sigma = inputs(net, [0.05, 0.7, 3.0, 20.0, 5.0])
    untuned = bypassed(net, x, sigma, monkeypatch)
    with skip_tuning(net, SkipSchedule(rho_bottom=0.6, rho_top=1.2, sigma_window=(0.5, 5.0))):
        tuned = run(net, x, sigma)
    for i, inside in enumerate([False, True, True, False, True]):  # the window is inclusive
        if inside:
            assert rel_err(tuned[i], untuned[i]) > 1e-4
        else:
            assert torch.equal(tuned[i], untuned[i])
    assert torch.equal(run(net, x, sigma), untuned)  # restored on exit
    assert "skip_window" not in net.state_dict()


# ---- checkpoints -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "suffix"), [(VPPrecond, ".pt"), (VEPrecond, ".safetensors")])
def test_save_and_load_round_trip(cls: type[Precond], suffix: str, tmp_path: Path) -> None:
    net = tiny(cls, label_dim=3, seed=9)
    path = save_checkpoint(net, tmp_path / f"net{suffix}")
    loaded = load_checkpoint(path)
    assert type(loaded) is cls and not loaded.training
    assert loaded.init_kwargs == net.init_kwargs  # type: ignore[union-attr]
    assert (loaded.sigma_min, loaded.sigma_max) == (net.sigma_min, net.sigma_max)
    x, sigma = inputs(net, [0.1, 2.0, 30.0])
    assert torch.equal(run(loaded, x, sigma), run(net, x, sigma))  # type: ignore[arg-type]


def _edm_pickle(net: torch.nn.Module, kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> bytes:
    """``{"ema": net}`` as EDM's ``torch_utils.persistence`` writes it (each module a persistent object)."""

    def _reconstruct_persistent_obj(meta: dict[str, Any]) -> Any:
        raise AssertionError("the loader must never call EDM's reconstruct function")

    module = types.ModuleType("torch_utils.persistence")
    _reconstruct_persistent_obj.__module__ = module.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    module._reconstruct_persistent_obj = _reconstruct_persistent_obj  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", module)

    class Pickler(pickle.Pickler):
        def reducer_override(self, item: Any) -> Any:
            if not isinstance(item, torch.nn.Module) or isinstance(item, torch.nn.ModuleDict):
                return NotImplemented
            state = {**item.__dict__, "_init_args": (), "_init_kwargs": kwargs if item is net else {}}
            meta = dict(type="class", version=6, module_src="", class_name=type(item).__name__, state=state)
            return _reconstruct_persistent_obj, (meta,)

    buf = io.BytesIO()
    Pickler(buf, protocol=4).dump({"ema": net})
    return buf.getvalue()


@pytest.mark.parametrize("cls", [VPPrecond, VEPrecond])
def test_edm_baseline_pickle_loads(
    cls: type[Precond], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = tiny(cls, seed=4)
    kwargs = {k: v for k, v in net.init_kwargs.items() if k not in ("label_dim", "use_fp16")}
    path = tmp_path / f"baseline-{cls.__name__}.pkl"
    path.write_bytes(_edm_pickle(net, kwargs, monkeypatch))
    monkeypatch.delitem(sys.modules, "torch_utils.persistence")
    loaded = load_checkpoint(path)
    assert type(loaded) is cls
    x, sigma = inputs(net, [0.1, 2.0, 30.0])
    assert torch.equal(run(loaded, x, sigma), run(net, x, sigma))  # type: ignore[arg-type]


# ---- sampling ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "schedule"),
    [(VEPrecond, EDMSchedule()), (VPPrecond, EDMSchedule(sigma_min=1e-4, sigma_max=500.0))],
)
def test_sampling_respects_the_sigma_range(cls: type[Precond], schedule: EDMSchedule) -> None:
    net = tiny(cls, label_dim=2, seed=6)
    seen: list[torch.Tensor] = []
    net.register_forward_pre_hook(lambda _m, args: seen.append(torch.as_tensor(args[1]).clone()))
    batches = list(
        generate_images(
            net, sampler="heun", nfe=7, seeds=[0, 1, 2], batch_size=2, device="cpu", schedule=schedule
        )
    )
    images = torch.cat(batches)
    assert images.shape == (3, 3, 8, 8) and images.dtype == torch.uint8
    assert images.float().std() > 1
    sigmas = torch.cat([s.reshape(-1) for s in seen]).double()
    lo = max(schedule.sigma_min, net.sigma_min)
    hi = min(schedule.sigma_max, net.sigma_max)
    assert len(seen) == 2 * 7  # 2 batches x nfe 7
    assert float(sigmas.min()) == pytest.approx(lo, rel=1e-6)
    assert float(sigmas.max()) == pytest.approx(hi, rel=1e-6)
