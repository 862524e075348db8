"""diffusers UNets: their long-skip order, skip scaling hooks, and loading a folder as a denoiser.

diffusers is an optional extra (``pip install skiptune[diffusers]``); it is imported only when one
of these functions needs it, and :func:`find_diffusers_unet` never imports it (a net cannot be a
diffusers UNet unless diffusers is already loaded).

Skip order. The encoder appends every resnet/downsampler output to ``down_block_res_samples``; each
up block receives the last ``len(block.resnets)`` of them as ``res_hidden_states_tuple`` (positionally
from ``UNet2DModel``, by keyword from ``UNet2DConditionModel``) and pops them from the END. So the
first skip the decoder consumes (j = 0, innermost) is the last tuple element of the first up block.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from skiptune.errors import SkiptuneError

_UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")
# Up blocks that read only part of their tuple would break the one-skip-per-element order.
_UNSUPPORTED_BLOCKS = ("KUpBlock2D", "KCrossAttnUpBlock2D")


def _is_unet(obj: object) -> bool:
    if "diffusers" not in sys.modules or not isinstance(obj, torch.nn.Module):
        return False
    import diffusers

    classes = tuple(getattr(diffusers, name) for name in _UNET_CLASSES)
    return isinstance(obj, classes)


# Attributes through which wrappers hold the net they run: the fast path's ``.net``, guidance's ``.denoiser``.
_WRAPPED = ("net", "denoiser")
_MAX_WRAPPERS = 4


def find_diffusers_unet(net: torch.nn.Module) -> torch.nn.Module | None:
    """``net`` itself or its ``.unet`` when that is a diffusers UNet2DModel/UNet2DConditionModel, also
    through wrappers (``.net``, ``.denoiser``) around such a net."""
    current: object = net
    for _ in range(_MAX_WRAPPERS):
        for candidate in (current, getattr(current, "unet", None)):
            if _is_unet(candidate):
                return candidate  # type: ignore[return-value]
        current = next((w for w in (getattr(current, a, None) for a in _WRAPPED) if w is not None), None)
        if current is None:
            return None
    return None


def _up_blocks(unet: torch.nn.Module) -> list[torch.nn.Module]:
    blocks = list(unet.up_blocks)  # type: ignore[arg-type]
    for block in blocks:
        if type(block).__name__ in _UNSUPPORTED_BLOCKS:
            raise SkiptuneError(
                f"diffusers up block {type(block).__name__} consumes only part of its skips; "
                "Skip-Tuning supports UNets built from the standard up blocks"
            )
    return blocks


def num_diffusers_skips(unet: torch.nn.Module) -> int:
    """Number of long skips (= len(down_block_res_samples) in the UNet's forward)."""
    return sum(len(block.resnets) for block in _up_blocks(unet))  # type: ignore[arg-type,misc]


# Per up block: a non-persistent float32 buffer of its skips' coefficients (tuple order), read by one
# pre-hook registered on first use. Tuning writes the buffer (copy_), so a compiled UNet is never
# recompiled when the coefficients change (new hooks with other constants would recompile every trial).
_SCALE_BUFFER = "skiptune_skip_scale"


class _Restore:
    """Puts a block's previous coefficients back; ``remove()`` as a hook handle's."""

    def __init__(self, buffer: torch.Tensor, saved: torch.Tensor) -> None:
        self.buffer, self.saved = buffer, saved

    def remove(self) -> None:
        with torch.no_grad():
            self.buffer.copy_(self.saved)


def scale_diffusers_skips(unet: torch.nn.Module, coefficients: Sequence[float]) -> list[Any]:
    """Multiply skip j by ``coefficients[j]`` until the returned handles' ``remove()``."""
    blocks = _up_blocks(unet)
    expected = num_diffusers_skips(unet)
    if len(coefficients) != expected:
        raise SkiptuneError(f"got {len(coefficients)} skip coefficients for a UNet with {expected} skips")
    handles = []
    offset = 0
    for block in blocks:
        count = len(block.resnets)  # type: ignore[arg-type]
        # Tuple position p is consumed (count - 1 - p)-th within the block.
        block_coefs = [float(coefficients[offset + count - 1 - p]) for p in range(count)]
        buffer = _scale_buffer(block, count)
        handles.append(_Restore(buffer, buffer.detach().clone()))
        with torch.no_grad():
            buffer.copy_(torch.tensor(block_coefs, dtype=torch.float32))
        offset += count
    return handles


def _scale_buffer(block: torch.nn.Module, count: int) -> torch.Tensor:
    buffer = getattr(block, _SCALE_BUFFER, None)
    if isinstance(buffer, torch.Tensor):
        return buffer
    device = next(block.parameters()).device
    with torch.inference_mode(False):  # a normal tensor: later writes may come from outside inference mode
        block.register_buffer(_SCALE_BUFFER, torch.ones(count, device=device), persistent=False)
    block.register_forward_pre_hook(_scale_tuple, with_kwargs=True)
    return block.get_buffer(_SCALE_BUFFER)


def _scale_tuple(block: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    key = "res_hidden_states_tuple"
    from_kwargs = key in kwargs
    if not from_kwargs and len(args) < 2:
        raise SkiptuneError("diffusers up block was called without res_hidden_states_tuple")
    skips = kwargs[key] if from_kwargs else args[1]
    coefs = block.get_buffer(_SCALE_BUFFER)
    if len(skips) != coefs.numel():
        raise SkiptuneError(f"up block got {len(skips)} skips, expected {coefs.numel()}")
    # x * 1.0 is x exactly: the untuned UNet stays bit-identical
    scaled = tuple(s * coefs[p] for p, s in enumerate(skips))  # a 0-d float32: the result keeps s.dtype
    if from_kwargs:
        return args, {**kwargs, key: scaled}
    return (args[0], scaled, *args[2:]), kwargs


# --- loading a diffusers folder -------------------------------------------------------------------


class DiffusersDenoiser(torch.nn.Module):
    """An EDM-style denoiser ``D(x, sigma, class_labels)`` around a discrete-time VP ``UNet2DModel``.

    Variance-preserving relation: ``x_t = sqrt(abar) * x0 + sqrt(1 - abar) * eps`` and
    ``sigma = sqrt((1 - abar) / abar)``; the UNet sees ``x / sqrt(1 + sigma^2)`` at the (fractional)
    timestep whose sigma matches, interpolated in log-sigma over the training schedule.
    """

    # Skips are scaled by hooks on the UNet's up blocks, which never see sigma.
    supports_sigma_window = False

    def __init__(self, unet: torch.nn.Module, *, alphas_cumprod: torch.Tensor, prediction_type: str) -> None:
        super().__init__()
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise SkiptuneError(f"unsupported diffusers prediction_type {prediction_type!r}")
        self.unet = unet
        self.prediction_type = prediction_type
        sigmas = ((1 - alphas_cumprod.double()) / alphas_cumprod.double()).sqrt()
        self.log_sigmas: torch.Tensor
        self.register_buffer("log_sigmas", sigmas.log().float(), persistent=False)
        config: Any = unet.config
        self.img_resolution = int(config.sample_size)
        self.img_channels = int(config.in_channels)
        self.label_dim = int(config.num_class_embeds or 0)
        self.sigma_min = float(sigmas.min())
        self.sigma_max = float(sigmas.max())

    def round_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        return torch.as_tensor(sigma)

    def _timesteps(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = sigma.float().clamp(self.sigma_min, self.sigma_max).log()
        table = self.log_sigmas.to(sigma.device)
        idx = torch.searchsorted(table, log_sigma).clamp(1, table.numel() - 1)
        lo, hi = table[idx - 1], table[idx]
        frac = (log_sigma - lo) / (hi - lo).clamp_min(1e-12)
        return idx - 1 + frac

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None,
                **_: Any) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        sigma = sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma
        s = sigma.reshape(-1, 1, 1, 1)
        c_in = 1 / (1 + s**2).sqrt()
        labels = None if class_labels is None or self.label_dim == 0 else class_labels.argmax(dim=1)
        out = self.unet(x * c_in, self._timesteps(sigma), class_labels=labels).sample.float()
        if self.prediction_type == "epsilon":
            return x - s * out
        if self.prediction_type == "v_prediction":
            return c_in**2 * x - s * c_in * out
        return out


def load_diffusers_unet(folder: str | Path, *, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a diffusers ``UNet2DModel`` folder (or a pipeline folder with ``unet/``) as a denoiser.

    The UNet is built from ``config.json`` and its weights read from safetensors or, failing that,
    a ``.bin`` through ``torch.load(weights_only=True)``; the noise schedule comes from
    ``scheduler/scheduler_config.json`` (pipeline folder) or ``scheduler_config.json`` beside it.
    """
    try:
        import diffusers
    except ImportError:
        raise SkiptuneError("loading a diffusers folder needs: pip install 'skiptune[diffusers]'") from None
    root = Path(folder)
    unet_dir = root / "unet" if (root / "unet" / "config.json").is_file() else root
    config = _read_json(unet_dir / "config.json")
    name = config.get("_class_name")
    if name != "UNet2DModel":
        raise SkiptuneError(
            f"{unet_dir / 'config.json'} describes {name!r}; only unconditional/class-conditional "
            "UNet2DModel folders load as denoisers (apply Skip-Tuning to other UNets with skip_tuning)"
        )
    unet = diffusers.UNet2DModel.from_config(config)
    missing, unexpected = unet.load_state_dict(_read_weights(unet_dir), strict=False)
    if missing or unexpected:
        raise SkiptuneError(
            f"weights in {unet_dir} do not fit its config.json: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}; check that the folder holds one consistent UNet"
        )
    sched_path = next(
        (p for p in (root / "scheduler" / "scheduler_config.json", unet_dir / "scheduler_config.json")
         if p.is_file()), None,
    )
    if sched_path is None:
        raise SkiptuneError(
            f"no scheduler config beside {unet_dir}; expected {root / 'scheduler' / 'scheduler_config.json'} "
            "(a diffusers pipeline folder) to know the noise schedule"
        )
    scheduler = diffusers.DDPMScheduler.from_config(_read_json(sched_path))
    denoiser = DiffusersDenoiser(
        unet, alphas_cumprod=scheduler.alphas_cumprod, prediction_type=scheduler.config.prediction_type
    )
    return denoiser.to(device).eval()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise SkiptuneError(f"missing {path}; expected a diffusers model folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SkiptuneError(f"{path} is not valid JSON ({exc}); re-download the model") from None


def _read_weights(unet_dir: Path) -> dict[str, torch.Tensor]:
    # Sharded checkpoints are several files; their union is the state dict.
    shards = sorted(unet_dir.glob("*.safetensors"))
    if shards:
        from safetensors.torch import load_file

        return {k: v for path in shards for k, v in load_file(str(path)).items()}
    bins = sorted(unet_dir.glob("*.bin"))
    if bins:
        loaded = [torch.load(path, map_location="cpu", weights_only=True) for path in bins]
        return {k: v for part in loaded for k, v in part.items()}
    raise SkiptuneError(f"no *.safetensors or *.bin weights in {unet_dir}")
