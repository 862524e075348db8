"""Checkpoint loading: EDM pickles through the restricted unpickler, our .pt/.safetensors, diffusers folders.

The EDM pickles here are written the way ``torch_utils.persistence`` writes them: each network module
becomes a call ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` whose ``meta`` carries the
class name, the ``__dict__`` (with ``_init_args`` / ``_init_kwargs``) and the module source. Our
``module_src`` writes a marker file when executed, so the tests can tell whether any code ran.
"""

from __future__ import annotations

import copy
import io
import os
import pickle
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import TINY_DHARIWAL, TINY_SONG, tiny_precond

from skiptune.errors import SkiptuneError
from skiptune.nets.checkpoints import load_checkpoint, save_checkpoint
from skiptune.skips import SkipSchedule, skip_tuning

CONTAINERS = (torch.nn.ModuleDict, torch.nn.ModuleList, torch.nn.Sequential)


def precond_kwargs(model_type: str) -> dict[str, Any]:
    base = TINY_SONG if model_type == "SongUNet" else TINY_DHARIWAL
    return dict(img_resolution=16, img_channels=3, label_dim=0, model_type=model_type, **base)


@pytest.fixture
def fake_persistence(tmp_path: Path) -> Iterator[types.FunctionType]:
    """A stand-in ``torch_utils.persistence`` whose reconstruct function executes ``module_src``, like
    EDM's. Installed only while the test writes its pickle; removed before anything is loaded."""

    def reconstruct(meta: dict[str, Any]) -> Any:
        exec(meta["module_src"], {})
        return None

    reconstruct.__module__ = "torch_utils.persistence"
    reconstruct.__qualname__ = reconstruct.__name__ = "_reconstruct_persistent_obj"
    package, module = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")
    module._reconstruct_persistent_obj = reconstruct  # type: ignore[attr-defined]
    package.persistence = module  # type: ignore[attr-defined]
    sys.modules.update({"torch_utils": package, "torch_utils.persistence": module})
    yield reconstruct  # type: ignore[misc]
    for name in ("torch_utils", "torch_utils.persistence"):
        sys.modules.pop(name, None)


def edm_pickle(obj: Any, net: torch.nn.Module, kwargs: dict[str, Any], reconstruct: Any, marker: Path,
               *, class_name: str | None = None) -> bytes:
    """Pickle ``obj`` with every non-container module written as an EDM persistent object."""
    src = f"open({str(marker)!r}, 'w').write('module_src was executed')\n"

    class EDMPickler(pickle.Pickler):
        def reducer_override(self, item: Any) -> Any:
            if not isinstance(item, torch.nn.Module) or isinstance(item, CONTAINERS):
                return NotImplemented
            state = dict(item.__dict__)
            state["_init_args"], state["_init_kwargs"] = (), (dict(kwargs) if item is net else {})
            name = class_name if (item is net and class_name) else type(item).__name__
            meta = dict(type="class", version=6, module_src=src, class_name=name, state=state)
            return reconstruct, (meta,)

    buf = io.BytesIO()
    EDMPickler(buf, protocol=4).dump(obj)
    return buf.getvalue()


def outputs(net: Any, seed: int = 11) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, net.img_channels, net.img_resolution, net.img_resolution, generator=gen)
    sigma = torch.exp(torch.randn(3, generator=gen))
    with torch.no_grad():
        return net(x, sigma)


@pytest.mark.parametrize(("model_type", "wrap"), [("SongUNet", True), ("DhariwalUNet", False)])
def test_edm_pickle_loads_without_running_its_code(
    model_type: str, wrap: bool, tmp_path: Path, fake_persistence: Any
) -> None:
    net = tiny_precond(model_type)
    marker = tmp_path / "marker"
    kwargs = precond_kwargs(model_type)
    data = {"ema": net, "loss_fn": torch.nn.Linear(2, 2), "dataset_kwargs": {"path": "x"}} if wrap else net
    blob = edm_pickle(data, net, kwargs, fake_persistence, marker)

    pickle.loads(blob)  # the oracle: plain pickle *does* execute module_src
    assert marker.exists()
    marker.unlink()
    sys.modules.pop("torch_utils.persistence")  # nothing of EDM's is importable while loading
    sys.modules.pop("torch_utils")

    path = tmp_path / "network-snapshot-000000.pkl"
    path.write_bytes(blob)
    loaded = load_checkpoint(path)
    assert not marker.exists()
    assert type(loaded).__name__ == "EDMPrecond" and not loaded.training
    assert torch.equal(outputs(loaded), outputs(net))
    for name, tensor in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


class Evil:
    def __init__(self, call: Any, arg: str) -> None:
        self.call, self.arg = call, arg

    def __reduce__(self) -> Any:
        return self.call, (self.arg,)


@pytest.mark.parametrize("how", ["os.system", "subprocess", "exec"])
def test_malicious_pickle_is_refused_before_anything_runs(how: str, tmp_path: Path) -> None:
    import subprocess

    marker = tmp_path / "pwned"
    shell = f"touch {marker}"
    payload = {
        "os.system": Evil(os.system, shell),
        "subprocess": Evil(subprocess.getoutput, shell),
        "exec": Evil(exec, f"open({str(marker)!r}, 'w')"),
    }[how]
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": payload}))
    with pytest.raises(SkiptuneError, match="may be unsafe") as info:
        load_checkpoint(path)
    assert {"os.system": "system", "subprocess": "subprocess.getoutput", "exec": "builtins.exec"}[how] in str(
        info.value
    )
    assert not marker.exists()


def test_storage_bytes_are_read_weights_only(tmp_path: Path) -> None:
    # A pickle that smuggles code through torch's storage bytes (read by torch.load) is refused too.
    marker = tmp_path / "pwned"
    inner = pickle.dumps(Evil(os.system, f"touch {marker}"))
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": Evil(torch.storage._load_from_bytes, inner)}, protocol=2))  # type: ignore[arg-type]
    with pytest.raises(SkiptuneError, match="may be unsafe"):
        load_checkpoint(path)
    assert not marker.exists()


def test_unknown_class_and_mismatched_weights(tmp_path: Path, fake_persistence: Any) -> None:
    net = tiny_precond("SongUNet")
    unknown = tmp_path / "iddpm.pkl"
    unknown.write_bytes(edm_pickle({"ema": net}, net, precond_kwargs("SongUNet"), fake_persistence,
                                   tmp_path / "m", class_name="iDDPMPrecond"))
    wrong = tmp_path / "wrong.pkl"
    wrong.write_bytes(edm_pickle({"ema": net}, net, {**precond_kwargs("SongUNet"), "model_channels": 8},
                                 fake_persistence, tmp_path / "m"))
    sys.modules.pop("torch_utils.persistence")
    with pytest.raises(SkiptuneError, match="'iDDPMPrecond' is not supported"):
        load_checkpoint(unknown)
    with pytest.raises(SkiptuneError, match="shapes do not match"):
        load_checkpoint(wrong)
    assert not (tmp_path / "m").exists()


def test_bad_files_give_one_clear_error(tmp_path: Path, fake_persistence: Any) -> None:
    net = tiny_precond("SongUNet")
    blob = edm_pickle({"ema": net}, net, precond_kwargs("SongUNet"), fake_persistence, tmp_path / "m")
    truncated = tmp_path / "cut.pkl"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(SkiptuneError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pkl")
    with pytest.raises(SkiptuneError, match="truncated pickle"):
        load_checkpoint(truncated)
    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps({"weights": [1, 2]}))
    with pytest.raises(SkiptuneError, match="key 'ema'"):
        load_checkpoint(other)
    with pytest.raises(SkiptuneError, match="unknown checkpoint type"):
        load_checkpoint(truncated.rename(tmp_path / "cut.ckpt"))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_save_and_load_round_trip(suffix: str, tmp_path: Path) -> None:
    net = tiny_precond("DhariwalUNet", label_dim=0)
    path = save_checkpoint(net, tmp_path / f"net{suffix}", config=precond_kwargs("DhariwalUNet"))
    loaded = load_checkpoint(path)
    assert torch.equal(outputs(loaded), outputs(net))
    again = save_checkpoint(loaded, tmp_path / f"again{suffix}")  # config recorded by the loader
    assert torch.equal(outputs(load_checkpoint(again)), outputs(net))
    # fp16 weights (as the demo model is stored) load into an fp32 net: equal to the rounded weights.
    config = precond_kwargs("DhariwalUNet")
    half = save_checkpoint(copy.deepcopy(net).half(), tmp_path / f"half{suffix}", config=config)
    rounded = copy.deepcopy(net).half().float()
    from_half = load_checkpoint(half)
    assert next(from_half.parameters()).dtype == torch.float32
    assert torch.equal(outputs(from_half), outputs(rounded))


def test_bad_pt_and_safetensors_files(tmp_path: Path) -> None:
    net = tiny_precond("SongUNet")
    good = save_checkpoint(net, tmp_path / "good.pt", config=precond_kwargs("SongUNet"))
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(SkiptuneError, match="truncated"):
        load_checkpoint(cut)
    whole = tmp_path / "module.pt"
    torch.save(net, whole)  # a pickled module: code, not weights
    with pytest.raises(SkiptuneError, match="refused"):
        load_checkpoint(whole)
    bare = tmp_path / "bare.pt"
    torch.save(net.state_dict(), bare)
    with pytest.raises(SkiptuneError, match="not a skiptune checkpoint"):
        load_checkpoint(bare)
    payload = torch.load(good, weights_only=True)
    key = sorted(payload["state_dict"])[-1]
    del payload["state_dict"][key]
    torch.save(payload, tmp_path / "missing.pt")
    with pytest.raises(SkiptuneError, match=re.escape(f"missing [{key!r}]")):
        load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(SkiptuneError, match="safetensors"):
        load_checkpoint(corrupt)
    with pytest.raises(SkiptuneError, match="unknown network class 'Linear'"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "x.pt")


def test_save_needs_a_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net = tiny_precond("SongUNet")
    monkeypatch.delattr(net, "init_kwargs", raising=False)
    with pytest.raises(SkiptuneError, match=r"config=\.\.\."):
        save_checkpoint(net, tmp_path / "x.pt")
    with pytest.raises(SkiptuneError, match=r"use a \.pt or \.safetensors"):
        save_checkpoint(net, tmp_path / "x.bin", config=precond_kwargs("SongUNet"))


# ---- diffusers folders -----------------------------------------------------------------------------


def test_diffusers_folder_loads_as_denoiser(tmp_path: Path) -> None:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    ).eval()
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000)
    unet.save_pretrained(tmp_path / "pipe" / "unet")
    scheduler.save_pretrained(tmp_path / "pipe" / "scheduler")
    denoiser = load_checkpoint(tmp_path / "pipe")
    assert (denoiser.img_resolution, denoiser.img_channels, denoiser.label_dim) == (16, 3, 0)

    # Reference at a training timestep t: x_t = sqrt(abar) x0 + sqrt(1-abar) eps, sigma = sqrt((1-abar)/abar).
    t = 412
    abar = scheduler.alphas_cumprod[t].double()
    sigma = float(((1 - abar) / abar).sqrt())
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        eps = unet(x * float(abar.sqrt()), torch.tensor([t, t])).sample
        got = denoiser(x, torch.tensor([sigma, sigma]))
    assert torch.allclose(got, x - sigma * eps, atol=1e-4, rtol=1e-4)
    with torch.no_grad(), skip_tuning(denoiser, SkipSchedule(rho_bottom=0.5, rho_top=1.5)):
        assert not torch.allclose(denoiser(x, torch.tensor([sigma, sigma])), got)  # adapter finds .unet
    with torch.no_grad():
        assert torch.equal(denoiser(x, torch.tensor([sigma, sigma])), got)

    (tmp_path / "pipe" / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(SkiptuneError, match="scheduler"):
        load_checkpoint(tmp_path / "pipe")
