"""A local diffusers pipeline folder, read safely: its index, component configs, weights and identity.

Only data is read: JSON configs, safetensors weights (never a pickled ``.bin``, which can run code)
and tokenizer files. ``pipeline_kind(root)`` tells which loader a folder needs, refusing pipeline
types skiptune does not run (SDXL and others) with one line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from skiptune.errors import SkiptuneError

STABLE_DIFFUSION = "stable-diffusion"
UNET_ONLY = "unet"  # a UNet2DModel folder or a pipeline around one (DDPMPipeline & co.)

# The pipeline classes whose components are exactly UNet2DConditionModel + AutoencoderKL + CLIP + scheduler.
_SD_PIPELINES = ("StableDiffusionPipeline",)
_SD_COMPONENTS = {
    "unet": "UNet2DConditionModel",
    "vae": "AutoencoderKL",
    "text_encoder": "CLIPTextModel",
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "scheduler": None,  # any scheduler: only its noise schedule (betas) and prediction type are read
}
# Keys that record who wrote a config, not what it computes: left out of the identity.
_PROVENANCE_KEYS = ("_diffusers_version", "transformers_version", "_name_or_path", "architectures")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; a missing or broken file is one line naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SkiptuneError(f"missing {path}; expected a diffusers model folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SkiptuneError(f"{path} is not valid JSON ({exc}); re-download the model") from None
    if not isinstance(data, dict):
        raise SkiptuneError(f"{path} holds a JSON {type(data).__name__}, expected an object")
    return data


def pipeline_kind(root: Path) -> str:
    """``STABLE_DIFFUSION`` or ``UNET_ONLY`` for a folder; any other pipeline type is refused."""
    index_path = root / "model_index.json"
    if not index_path.is_file():
        if (root / "config.json").is_file() or (root / "unet" / "config.json").is_file():
            return UNET_ONLY
        raise SkiptuneError(
            f"{root} is not a diffusers pipeline folder (no model_index.json, config.json or unet/); "
            "pass the folder written by save_pretrained, e.g. a local copy of a Stable Diffusion model"
        )
    index = read_json(index_path)
    name = str(index.get("_class_name"))
    if name in _SD_PIPELINES:
        _check_components(index, index_path)
        return STABLE_DIFFUSION
    if "XL" in name:
        raise SkiptuneError(
            f"{index_path}: {name} (SDXL) is not supported: its two text encoders and size conditioning "
            "have no loader here; use a Stable Diffusion 1.x/2.x folder (StableDiffusionPipeline)"
        )
    if set(index) - {"_class_name", "_diffusers_version", "unet", "scheduler"}:
        raise SkiptuneError(
            f"{index_path}: pipeline type {name!r} is not supported; skiptune loads StableDiffusionPipeline "
            "folders (SD 1.x/2.x) and unconditional/class-conditional UNet2DModel folders"
        )
    return UNET_ONLY


def _check_components(index: dict[str, Any], index_path: Path) -> None:
    for component, expected in _SD_COMPONENTS.items():
        entry = index.get(component)
        if not isinstance(entry, list) or len(entry) != 2 or entry[1] is None:
            raise SkiptuneError(
                f"{index_path}: component {component!r} is missing ({entry!r}); a Stable Diffusion folder "
                "needs unet, vae, text_encoder, tokenizer and scheduler"
            )
        allowed = (expected,) if isinstance(expected, str) else expected
        if allowed is not None and entry[1] not in allowed:
            raise SkiptuneError(
                f"{index_path}: component {component!r} is a {entry[1]}, expected {' or '.join(allowed)} "
                "(the Stable Diffusion 1.x/2.x layout)"
            )


def read_safetensors(folder: Path, stem: str) -> dict[str, torch.Tensor]:
    """The state dict in ``folder``: ``{stem}.safetensors``, its shards (``.index.json``), or the one
    ``*.safetensors`` file there. Pickled ``.bin`` weights are refused (loading them can run code)."""
    from safetensors.torch import load_file

    single, index = folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise SkiptuneError(f"{index} has no weight_map; re-download the model")
        files = [folder / name for name in sorted(set(map(str, weight_map.values())))]
    else:
        files = sorted(folder.glob("*.safetensors"))
        if len(files) != 1:
            found = ", ".join(p.name for p in sorted(folder.iterdir())) if folder.is_dir() else "nothing"
            raise SkiptuneError(
                f"no {stem}.safetensors in {folder} (found: {found}); weights load only from safetensors, "
                "never from pickled .bin files: convert them (diffusers' save_pretrained writes safetensors)"
            )
    state: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            state.update(load_file(str(path)))
        except Exception as exc:  # safetensors raises its own types for corrupt headers
            raise SkiptuneError(
                f"{path}: unreadable or truncated safetensors ({exc}); re-download it"
            ) from None
    return state


def load_state(
    module: torch.nn.Module,
    state: dict[str, torch.Tensor],
    *,
    source: Path,
    ignore_unexpected: tuple[str, ...] = (),
) -> None:
    """Fill ``module`` from ``state``: every parameter present, shapes equal, or one line naming the gap."""
    own = module.state_dict()
    # e.g. CLIP's position_ids: a buffer older transformers saved and newer ones keep out of the state
    state = {
        k: v
        for k, v in state.items()
        if k in own or not (ignore_unexpected and k.endswith(ignore_unexpected))
    }
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        raise SkiptuneError(
            f"weights in {source} do not fit its config.json: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, other shapes {shapes[:3]}; check that the folder holds one consistent model"
        )
    module.load_state_dict(state, strict=True)


def config_identity(config: dict[str, Any]) -> str:
    """Canonical JSON of a component config, without the keys that only record who wrote it."""
    kept = {k: v for k, v in config.items() if k not in _PROVENANCE_KEYS}
    return json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)


def folder_identity(root: Path, configs: dict[str, dict[str, Any]], files_dir: Path) -> str:
    """sha256 over the component configs (canonical) and every file of ``files_dir`` (the tokenizer):
    what changes samples besides the weights, which ``fingerprint`` hashes from the state dict."""
    digest = hashlib.sha256()
    for name in sorted(configs):
        digest.update(f"config {name}\n{config_identity(configs[name])}\n".encode())
    for path in sorted(p for p in files_dir.rglob("*") if p.is_file()):
        digest.update(f"file {path.relative_to(root).as_posix()} {path.stat().st_size}\n".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
