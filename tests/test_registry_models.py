"""Named models, load_model and network fingerprints."""

from __future__ import annotations

import copy
import hashlib
import uuid
from pathlib import Path

import pytest
import torch
from helpers import TINY_SONG, tiny_precond

from skiptune.demo.bundled import ASSETS
from skiptune.errors import SkiptuneError
from skiptune.nets.checkpoints import save_checkpoint
from skiptune.nets.registry import MODELS, fingerprint, load_model, register_model, resolve_model
from skiptune.skips import SkipSchedule, skip_tuning

CONFIG = dict(img_resolution=16, img_channels=3, label_dim=0, model_type="SongUNet", **TINY_SONG)


def reference_fingerprint(state: dict[str, torch.Tensor]) -> str:
    # Independent spelling of the documented recipe: names sorted, then name|dtype|shape and raw bytes.
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(bytes(tensor.detach().cpu().contiguous().untyped_storage())[: tensor.nbytes])
    return digest.hexdigest()


def test_fingerprint_follows_weights_not_skip_settings() -> None:
    net = tiny_precond("SongUNet")
    fp = fingerprint(net)
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert fp == reference_fingerprint(net.state_dict())
    assert fingerprint(copy.deepcopy(net)) == fp
    with skip_tuning(net, SkipSchedule(0.7, 1.3, sigma_window=(0.1, 2.0))):
        assert fingerprint(net) == fp  # non-persistent skip buffers are not identity
    other = copy.deepcopy(net)
    with torch.no_grad():
        param = next(other.parameters())
        param.view(-1)[0] = torch.nextafter(param.view(-1)[0], torch.tensor(float("inf")))
    assert fingerprint(other) != fp  # one ulp of one weight changes it
    assert fingerprint(copy.deepcopy(net).double()) != fp  # dtype is part of it


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fingerprint_is_device_independent() -> None:
    net = tiny_precond("SongUNet")
    assert fingerprint(copy.deepcopy(net).cuda()) == fingerprint(net)


def test_load_model_by_path_and_registered_name(tmp_path: Path) -> None:
    net = tiny_precond("SongUNet")
    path = save_checkpoint(net, tmp_path / "tiny-song.pt", config=CONFIG)
    loaded = load_model(path)
    assert loaded.name == "tiny-song" and loaded.source == path
    assert loaded.fingerprint == fingerprint(net)
    assert not loaded.net.training
    assert not any(p.requires_grad for p in loaded.net.parameters())
    name = f"test-{uuid.uuid4().hex[:8]}"
    register_model(name, path)
    by_name = load_model(name)
    assert by_name.name == name and by_name.fingerprint == loaded.fingerprint
    assert by_name.short_fingerprint == loaded.fingerprint[:16]


def test_demo_is_registered_and_missing_files_are_clear(tmp_path: Path) -> None:
    assert "demo" in MODELS
    assert MODELS.get("demo")() == ASSETS / "fmnist-edm.pt"
    name = f"test-{uuid.uuid4().hex[:8]}"
    register_model(name, tmp_path / "absent.pt")
    with pytest.raises(SkiptuneError, match=f"model '{name}' is registered at .*absent.pt, which does not"):
        resolve_model(name)
    with pytest.raises(SkiptuneError, match="neither a registered model"):
        load_model("no-such-model")
    with pytest.raises(ValueError, match="already registered"):
        register_model(name, tmp_path / "other.pt")
