"""Named models and network fingerprints.

``load_model(NAME)`` loads a model registered in ``skiptune.plugins.MODELS`` (by ``register_model`` or
a plugin); ``load_model("path/to/file.pkl")`` any checkpoint
:func:`skiptune.nets.checkpoints.load_checkpoint` reads. A model's fingerprint (a sha256 over its state
dict) goes into study identities, so two studies can only share trials when they tuned the very same
weights.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from skiptune.errors import SkiptuneError
from skiptune.nets.checkpoints import load_checkpoint

# Model name -> a function giving the checkpoint path (resolved at load time, so a model can be
# registered before its file exists); the registry and register_model live in skiptune.plugins.
from skiptune.plugins import MODELS, register_model

__all__ = ["MODELS", "LoadedModel", "fingerprint", "load_model", "register_model", "resolve_model"]


@dataclass(frozen=True)
class LoadedModel:
    """A network ready for sampling: eval mode, no gradients, with its identity."""

    name: str
    net: torch.nn.Module
    fingerprint: str
    source: Path

    @property
    def short_fingerprint(self) -> str:
        return self.fingerprint[:16]


def fingerprint(net: torch.nn.Module) -> str:
    """sha256 hex digest over the sorted state dict: names, dtypes, shapes and bytes.

    Independent of the device (tensors are hashed from CPU copies) and of non-persistent buffers
    such as the skip coefficients, so tuning never changes a model's identity. A net that also depends
    on files outside its weights (a pipeline folder's configs and tokenizer) states their hash as
    ``extra_identity``, which is hashed in too.
    """
    digest = hashlib.sha256()
    extra = getattr(net, "extra_identity", "")
    if extra:
        digest.update(f"extra|{extra}\n".encode())
    state = net.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        # view as bytes: numpy has no bfloat16, and this avoids any dtype conversion
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def resolve_model(name_or_path: str | Path) -> tuple[str, Path]:
    """(short model name, checkpoint path): a registered name, else a path named by its stem."""
    text = str(name_or_path)
    if text in MODELS:
        path = MODELS.get(text)()
        if not path.exists():
            raise SkiptuneError(
                f"model {text!r} is registered at {path}, which does not exist; "
                "fix the registration or pass a checkpoint path"
            )
        return text, path
    path = Path(name_or_path)
    if not path.exists():
        raise SkiptuneError(
            f"{text!r} is neither a registered model ({', '.join(MODELS.names())}) nor an existing "
            "checkpoint path; pass a .pkl/.pt/.safetensors file or a diffusers folder"
        )
    return (path.stem if path.is_file() else path.name), path


def load_model(name_or_path: str | Path, *, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a registered model or a checkpoint path; the net is in eval mode without gradients."""
    name, path = resolve_model(name_or_path)
    net = load_checkpoint(path, device=device)
    net.eval().requires_grad_(False)
    return LoadedModel(name=name, net=net, fingerprint=fingerprint(net), source=path)
