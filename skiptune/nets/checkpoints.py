"""Load networks from NVlabs EDM pickles (safely), our .pt / .safetensors files and diffusers folders.

EDM pickles are produced by ``torch_utils.persistence``: every network class is pickled as a call
``_reconstruct_persistent_obj(meta)`` where ``meta`` holds the class name, the module's *source code*
and the object's ``__dict__`` (including ``_init_args`` / ``_init_kwargs``). Loading them with
``pickle.load`` executes that source. Here a restricted unpickler maps that call to an inert record,
refuses every global outside a short allow-list (so ``os.system`` & co. are rejected before anything
runs), and our own class is then built by name from the recorded keyword arguments and filled with
the recorded parameters and buffers. ``module_src`` is never executed.

Our own format (``save_checkpoint``): ``{"format": "skiptune", "version": 1, "class_name": ...,
"config": {...constructor kwargs...}, "state_dict": {...}}`` in a ``.pt`` (read with
``torch.load(weights_only=True)``), or the same in a ``.safetensors`` with class_name/config in
its metadata.
"""

from __future__ import annotations

import copy
import io
import json
import pickle
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from skiptune.errors import SkiptuneError
from skiptune.io import load_weights
from skiptune.nets.edm import BACKBONES, EDMPrecond
from skiptune.nets.edm2 import EDM2Precond, EDM2UNet
from skiptune.nets.precond import VEPrecond, VPPrecond
from skiptune.registry import Registry

FORMAT = "skiptune"
FORMAT_VERSION = 1

# Class name (as EDM pickles and our files spell it) -> constructor taking the recorded kwargs.
NETWORK_CLASSES: Registry[Callable[..., torch.nn.Module]] = Registry("network class")
NETWORK_CLASSES.register("EDMPrecond", EDMPrecond)
NETWORK_CLASSES.register("VPPrecond", VPPrecond)
NETWORK_CLASSES.register("VEPrecond", VEPrecond)
for _name in BACKBONES:
    NETWORK_CLASSES.register(_name, BACKBONES.get(_name))
# EDM2 pickles record only the bare class names of training/networks_edm2.py (persistence keeps no
# module path), so "Precond" / "UNet" mean EDM2's; our own files name our classes.
for _name, _cls in (("Precond", EDM2Precond), ("UNet", EDM2UNet), ("EDM2Precond", EDM2Precond),
                    ("EDM2UNet", EDM2UNet)):
    NETWORK_CLASSES.register(_name, _cls)


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a denoiser from an EDM ``.pkl``, a ``.pt``/``.pth``, a ``.safetensors``, a latent model ``.json``
    (a checkpoint + the VAE folder decoding it, see ``nets.pipelines.latent_model``) or a diffusers folder."""
    path = Path(path)
    if not path.exists():
        raise SkiptuneError(f"checkpoint {path} does not exist; check the path or the model name")
    if path.is_dir():
        return _load_folder(path, device=device)
    loader = _LOADERS.get(path.suffix.lower())
    if loader is None:
        raise SkiptuneError(
            f"unknown checkpoint type {path.name!r}; expected .pkl (EDM), .pt/.pth, .safetensors, "
            "a latent model .json or a diffusers folder"
        )
    net = loader(path)
    return net.to(device).eval()


def _load_folder(path: Path, *, device: str | torch.device) -> torch.nn.Module:
    from skiptune.nets.pipelines.folder import STABLE_DIFFUSION, pipeline_kind

    if pipeline_kind(path) == STABLE_DIFFUSION:
        from skiptune.nets.pipelines.stable_diffusion import load_stable_diffusion

        return load_stable_diffusion(path, device=device)
    from skiptune.nets.diffusers import load_diffusers_unet

    return load_diffusers_unet(path, device=device)


def _loaders() -> dict[str, Callable[[Path], torch.nn.Module]]:
    return {".pkl": _load_edm_pickle, ".pt": _load_torch, ".pth": _load_torch,
            ".safetensors": _load_safetensors, ".json": _load_latent_model}


def _load_latent_model(path: Path) -> torch.nn.Module:
    from skiptune.nets.pipelines.latent_model import load_latent_model

    def load_denoiser(inner: Path) -> torch.nn.Module:
        if inner.suffix.lower() == ".json" or inner.is_dir():
            raise SkiptuneError(f"{path}: the denoiser {inner.name} must be a .pkl/.pt/.safetensors file")
        return load_checkpoint(inner)

    return load_latent_model(path, load_denoiser=load_denoiser)


def save_checkpoint(net: torch.nn.Module, path: str | Path, *, config: dict[str, Any] | None = None) -> Path:
    """Write ``net`` in our format (``.pt`` or ``.safetensors`` by suffix); returns the path.

    ``config`` (constructor keyword arguments) defaults to ``net.init_kwargs``.
    """
    path = Path(path)
    class_name = type(net).__name__
    NETWORK_CLASSES.get(class_name)  # only nets we can rebuild
    config = copy.deepcopy(config if config is not None else getattr(net, "init_kwargs", None))
    if not isinstance(config, dict):
        raise SkiptuneError(
            f"{class_name} does not record its constructor arguments (init_kwargs); pass config=... "
            "to save_checkpoint"
        )
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import save_file

        meta = {"format": FORMAT, "version": str(FORMAT_VERSION), "class_name": class_name,
                "config": json.dumps(config)}
        save_file(state, str(tmp), metadata=meta)
    elif path.suffix.lower() in (".pt", ".pth"):
        payload = {"format": FORMAT, "version": FORMAT_VERSION, "class_name": class_name,
                   "config": config, "state_dict": state}
        torch.save(payload, tmp)
    else:
        raise SkiptuneError(f"cannot save to {path.name!r}; use a .pt or .safetensors file name")
    tmp.replace(path)  # atomic: a crash never leaves a half-written checkpoint under the real name
    return path


def build_network(
    class_name: str, config: dict[str, Any], state_dict: dict[str, torch.Tensor], *, source: Path,
    args: tuple = (),
) -> torch.nn.Module:
    """Our class ``class_name`` built from its constructor arguments, then filled with ``state_dict``."""
    if class_name not in NETWORK_CLASSES:
        raise SkiptuneError(
            f"{source}: network class {class_name!r} is not supported; supported: "
            f"{', '.join(NETWORK_CLASSES.names())}"
        )
    try:
        net = NETWORK_CLASSES.get(class_name)(*args, **config)
    except (TypeError, ValueError) as exc:
        raise SkiptuneError(
            f"{source}: cannot build {class_name} from its recorded arguments: {exc}"
        ) from None
    missing, unexpected = _load_state(net, state_dict, source=source, class_name=class_name)
    if missing or unexpected:
        raise SkiptuneError(
            f"{source}: weights do not match {class_name}({_short(config)}): missing {missing[:4]}"
            f"{' ...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
            f"{' ...' if len(unexpected) > 4 else ''}; the file was written for a different architecture"
        )
    if not hasattr(net, "init_kwargs"):
        net.init_kwargs = copy.deepcopy(config)  # type: ignore[assignment]  # for save_checkpoint
    return net


def _load_state(
    net: torch.nn.Module, state: dict[str, torch.Tensor], *, source: Path, class_name: str
) -> tuple[list[str], list[str]]:
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        return missing, unexpected
    bad = [f"{k}: file {tuple(v.shape)} vs net {tuple(own[k].shape)}" for k, v in state.items()
           if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise SkiptuneError(
            f"{source}: tensor shapes do not match {class_name}: {'; '.join(bad[:3])}; the file was "
            "written for a different configuration"
        )
    net.load_state_dict(state, strict=True)
    return [], []


def _short(config: dict[str, Any]) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in config.items())
    return text if len(text) < 120 else text[:117] + "..."


# --- our .pt and .safetensors -------------------------------------------------------------------


def _load_torch(path: Path) -> torch.nn.Module:
    # never pickled code; PyTorch's "retry with weights_only=False" advice is not passed on
    payload = load_weights(path, what="checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise SkiptuneError(
            f"{path}: not a skiptune checkpoint (expected a dict with format={FORMAT!r}, class_name, "
            "config, state_dict); write one with skiptune.nets.checkpoints.save_checkpoint"
        )
    config, state = payload.get("config"), payload.get("state_dict")
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise SkiptuneError(f"{path}: skiptune checkpoint lacks its config or state_dict; re-create it")
    return build_network(str(payload.get("class_name")), config, state, source=path)


def _load_safetensors(path: Path) -> torch.nn.Module:
    try:
        from safetensors import safe_open
    except ImportError:
        raise SkiptuneError("loading .safetensors needs: pip install safetensors") from None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise SkiptuneError(
            f"{path}: unreadable or truncated .safetensors ({_first_line(exc)}); re-create it"
        ) from None
    if meta.get("format") != FORMAT or "config" not in meta:
        raise SkiptuneError(
            f"{path}: safetensors metadata lacks format={FORMAT!r} and a config; write it with "
            "skiptune.nets.checkpoints.save_checkpoint"
        )
    try:
        config = json.loads(meta["config"])
    except json.JSONDecodeError:
        raise SkiptuneError(f"{path}: metadata config is not valid JSON; re-create the file") from None
    return build_network(str(meta.get("class_name")), config, state, source=path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


# --- EDM pickles ------------------------------------------------------------------------------------


class _PersistentRecord:
    """An EDM persistent object, kept as data: its class name and its pickled ``__dict__``."""

    def __init__(self, class_name: str, state: dict[str, Any]) -> None:
        self.class_name = class_name
        self.state = state


class _ContainerRecord:
    """A torch container (ModuleDict/ModuleList/Sequential) kept as data: pickle fills ``state``."""

    state: dict[str, Any]

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.state = state


class _EasyDict(dict):
    """Stands in for ``dnnlib.util.EasyDict`` (EDM's attribute-access dict)."""


def _persistent_record(meta: dict[str, Any]) -> _PersistentRecord:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise SkiptuneError(
            "malformed EDM persistent object in the pickle; the file is corrupt or not from EDM"
        )
    # meta["module_src"] is deliberately ignored: executing it is what makes EDM pickles unsafe.
    return _PersistentRecord(str(meta.get("class_name")), meta["state"])


def _storage_from_bytes(data: bytes) -> Any:
    # torch pickles a storage as torch.save bytes; read them with the weights-only unpickler.
    if not isinstance(data, bytes):
        raise SkiptuneError("malformed tensor storage in the pickle; the file is corrupt or not from EDM")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise SkiptuneError(
            f"refused a tensor storage holding more than weights ({_first_line(exc)}); the file may be "
            "unsafe (pickles can run code)"
        ) from None


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record,
        ("dnnlib.util", "EasyDict"): _EasyDict,
        ("dnnlib", "EasyDict"): _EasyDict,
        ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("collections", "OrderedDict"): OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
    }
    for container in ("ModuleDict", "ModuleList", "Sequential"):
        allowed[("torch.nn.modules.container", container)] = _ContainerRecord
    try:
        import numpy as np

        try:
            from numpy._core import multiarray  # numpy >= 2
        except ImportError:
            from numpy.core import multiarray  # type: ignore[no-redef]
        # Pickles written under numpy 1.x name numpy.core, under 2.x numpy._core.
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
            allowed[(mod, "_reconstruct")] = multiarray._reconstruct
            allowed[(mod, "scalar")] = multiarray.scalar
        allowed[("numpy", "ndarray")] = np.ndarray
        allowed[("numpy", "dtype")] = np.dtype
    except ImportError:  # numpy is optional for torch; pickles needing it then fail cleanly
        pass
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, *, source: Path) -> None:
        super().__init__(file)
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise SkiptuneError(
                f"{self._source}: refused to load: the pickle references {module}.{name}, which is not "
                "part of an EDM network pickle. The file may be unsafe (pickles can run code); do not load "
                "it with pickle either"
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise SkiptuneError(f"{self._source}: unexpected persistent id; not an EDM network pickle")


def _load_edm_pickle(path: Path) -> torch.nn.Module:
    try:
        with path.open("rb") as f:
            data = _RestrictedUnpickler(f, source=path).load()
    except SkiptuneError:
        raise
    except Exception as exc:  # truncated/corrupt pickles raise many types (EOFError, UnpicklingError, ...)
        raise SkiptuneError(
            f"{path}: unreadable or truncated pickle ({_first_line(exc)}); re-download it"
        ) from None
    record = data.get("ema") if isinstance(data, dict) else data
    if not isinstance(record, _PersistentRecord):
        keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise SkiptuneError(
            f"{path}: expected an EDM network pickle (a dict with key 'ema' or a bare network), found {keys}"
        )
    args, kwargs = record.state.get("_init_args"), record.state.get("_init_kwargs")
    if not isinstance(kwargs, dict):
        raise SkiptuneError(f"{path}: the pickled {record.class_name} has no recorded constructor arguments")
    state = _record_state_dict(record.state)
    return build_network(record.class_name, dict(kwargs), state, source=path, args=tuple(args or ()))


def _record_state_dict(state: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    """The ``state_dict()`` a module with pickled ``__dict__`` ``state`` would have produced."""
    out: dict[str, torch.Tensor] = {}
    transient = state.get("_non_persistent_buffers_set") or set()
    tensors = [*(state.get("_parameters") or {}).items(),
               *((k, v) for k, v in (state.get("_buffers") or {}).items() if k not in transient)]
    for name, value in tensors:
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise SkiptuneError(f"pickled parameter {prefix}{name} is a {type(value).__name__}, not a tensor")
        out[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, (_PersistentRecord, _ContainerRecord)):
            out.update(_record_state_dict(child.state, f"{prefix}{name}."))
        elif child is not None:
            raise SkiptuneError(f"unexpected submodule {prefix}{name} ({type(child).__name__}) in pickle")
    return out


_LOADERS = _loaders()
