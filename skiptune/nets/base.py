"""The skip-tunable network base every family builds on (EDM, VP/VE, EDM2).

What Skip-Tuning needs of a network (:class:`SkipTunable`): a backbone ``model`` with ``num_skips`` and a
non-persistent float32 ``skip_coefficients`` buffer (the decoder multiplies the j-th long skip it
consumes, j = 0 innermost, by ``coef[j]``), and, on the preconditioned network, a non-persistent
``skip_window`` buffer ``[lo, hi]``: only samples whose sigma lies inside get the coefficients.
``supports_sigma_window`` says whether the network has that window (:func:`supports_sigma_window` asks
any network, wrappers included).

:class:`SkipTunableBackbone` and :class:`SkipTunablePrecond` hold what the families share: the skip
buffers and their per-sample factors, labels, backbone construction by name (:data:`BACKBONES`), and
``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)`` with the backbone run at EDM's dtype or at the
fast path's (``native_dtypes``).
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from skiptune.errors import SkiptuneError
from skiptune.registry import Registry

__all__ = [
    "BACKBONES",
    "Coefficients",
    "SkipBackbone",
    "SkipTunable",
    "SkipTunableBackbone",
    "SkipTunablePrecond",
    "as_sigma",
    "build_backbone",
    "check_resolution",
    "edm_coefficients",
    "one_hot_labels",
    "precond_labels",
    "supports_sigma_window",
    "window_mask",
]


@runtime_checkable
class SkipBackbone(Protocol):
    """A backbone whose long skips Skip-Tuning scales: ``skip_coefficients`` is float32 ``[num_skips]``,
    non-persistent (never in a checkpoint), read inside forward (writing it never recompiles)."""

    @property
    def num_skips(self) -> int: ...

    @property
    def skip_coefficients(self) -> torch.Tensor: ...


@runtime_checkable
class SkipTunable(Protocol):
    """A preconditioned network Skip-Tuning drives through buffers alone (``skiptune.skips``)."""

    @property
    def model(self) -> SkipBackbone: ...

    @property
    def skip_window(self) -> torch.Tensor: ...

    @property
    def supports_sigma_window(self) -> bool: ...


def supports_sigma_window(net: object) -> bool:
    """Whether ``net`` can apply skip coefficients inside a sigma window only.

    True for our preconditioned networks (EDM, VP/VE, EDM2) and wrappers of them (the fast path's
    ``FastDenoiser``); False for the diffusers denoiser, bare backbones (which never see sigma) and any
    network only a hook adapter knows.
    """
    return isinstance(net, SkipTunable) and net.supports_sigma_window is True


def one_hot_labels(labels: torch.Tensor, label_dim: int) -> torch.Tensor:
    """Integer class indices ``[N]`` become one-hot float32 ``[N, label_dim]``; float labels pass through."""
    if labels.is_floating_point():
        return labels
    return torch.nn.functional.one_hot(labels.reshape(-1).long(), label_dim).to(torch.float32)


def check_resolution(img_resolution: int, channel_mult: Sequence[int], example: str = "[1, 2, 2]") -> None:
    """Reject an empty ``channel_mult`` or a resolution the UNet's levels cannot halve down to."""
    if not channel_mult:
        raise SkiptuneError(
            f"channel_mult is empty; give one channel multiplier per resolution, e.g. {example}"
        )
    steps = 2 ** (len(channel_mult) - 1)
    if img_resolution <= 0 or img_resolution % steps:
        raise SkiptuneError(
            f"img_resolution={img_resolution} cannot be halved {len(channel_mult) - 1} times "
            f"(channel_mult={list(channel_mult)}); use a positive multiple of {steps}"
        )


class SkipTunableBackbone(torch.nn.Module):
    """Base of the backbones: owns ``num_skips`` and the ``skip_coefficients`` buffer."""

    num_skips: int
    skip_coefficients: torch.Tensor
    enc: torch.nn.ModuleDict
    dec: torch.nn.ModuleDict

    def _init_skips(self, pushed_channels: Sequence[int]) -> None:
        """``pushed_channels``: channels of the skips in the order the encoder pushes them."""
        self._skip_channels = [int(c) for c in reversed(pushed_channels)]
        self.num_skips = len(self._skip_channels)
        ones = torch.ones(self.num_skips, dtype=torch.float32)
        self.register_buffer("skip_coefficients", ones, persistent=False)

    def skip_channels(self) -> list[int]:
        """Channels of skip j, in decoder consumption order (j = 0 innermost)."""
        return list(self._skip_channels)

    def _skip_factors(self, skip_mask: torch.Tensor | None) -> torch.Tensor:
        """Per-sample factors ``[N or 1, num_skips]``: ``coef`` where the mask holds, else 1."""
        coef = self.skip_coefficients.to(torch.float32).unsqueeze(0)
        if skip_mask is None:
            return coef
        mask = skip_mask.to(device=coef.device, dtype=torch.bool).reshape(-1, 1)
        return torch.where(mask, coef, torch.ones_like(coef))

    @staticmethod
    def _scaled_skip(skip: torch.Tensor, factors: torch.Tensor, j: int) -> torch.Tensor:
        return skip * factors[:, j].reshape(-1, 1, 1, 1).to(skip.dtype)

    def _concat_skip(
        self, x: torch.Tensor, skip: torch.Tensor, factors: torch.Tensor, j: int
    ) -> torch.Tensor:
        """``cat([x, factor_j * skip])`` along channels, kept in ``x``'s memory format.

        Traced, a concatenation may be laid out NCHW although its inputs are channels_last; its
        readers (group norm, the 1x1 skip convolution) would then transpose it. This pins the layout
        (a no-op in eager mode, where ``cat`` keeps channels_last already).
        """
        out = torch.cat([x, self._scaled_skip(skip, factors, j)], dim=1)
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def _labels_for(self, class_labels: torch.Tensor | None, label_dim: int) -> torch.Tensor:
        if class_labels is None:
            raise SkiptuneError(
                f"this {type(self).__name__} is class-conditional (label_dim={label_dim}) but got "
                "class_labels=None; pass one-hot [N, label_dim] or integer [N] labels"
            )
        return one_hot_labels(class_labels, label_dim)


# Backbones a preconditioning builds by ``model_type`` (EDM's SongUNet, DhariwalUNet register here).
BACKBONES: Registry[type[SkipTunableBackbone]] = Registry("backbone")


def build_backbone(model_type: str, **kwargs: Any) -> SkipTunableBackbone:
    """``BACKBONES[model_type](**kwargs)``, with a clear error for keywords the backbone lacks."""
    backbone = BACKBONES.get(model_type)
    try:
        inspect.signature(backbone).bind(**kwargs)
    except TypeError as exc:
        raise SkiptuneError(
            f"{model_type} does not accept the arguments {sorted(kwargs)}: {exc}; "
            f"see the {model_type} constructor for its keywords"
        ) from None
    return backbone(**kwargs)


def precond_labels(
    class_labels: torch.Tensor | None, label_dim: int, device: torch.device
) -> torch.Tensor | None:
    """Labels as a preconditioning passes them on: one-hot float32 ``[N, label_dim]``, or EDM's
    all-zero label (the unconditional direction, broadcast over the batch) when none are given."""
    if label_dim == 0:
        return None
    if class_labels is None:
        return torch.zeros([1, label_dim], device=device)
    labels = one_hot_labels(torch.as_tensor(class_labels, device=device), label_dim)
    return labels.to(torch.float32).reshape(-1, label_dim)


def window_mask(skip_window: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per sample: is its sigma inside ``skip_window = [lo, hi]`` (both ends included)?"""
    window = skip_window.to(device=sigma.device, dtype=torch.float32)
    return ((sigma >= window[0]) & (sigma <= window[1])).reshape(-1)


def as_sigma(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """``sigma`` (a number or ``[N]``) as float32 ``[N, 1, 1, 1]`` on ``x``'s device."""
    return torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)


Coefficients = tuple[float | torch.Tensor, torch.Tensor, float | torch.Tensor, torch.Tensor]


def edm_coefficients(sigma: torch.Tensor, sigma_data: float) -> Coefficients:
    """EDM's ``(c_skip, c_out, c_in, c_noise)`` (Karras et al. 2022, Table 1), shared by EDM2."""
    sd2 = sigma_data**2
    c_skip = sd2 / (sigma**2 + sd2)
    c_out = sigma * sigma_data / (sigma**2 + sd2).sqrt()
    c_in = 1 / (sd2 + sigma**2).sqrt()
    return c_skip, c_out, c_in, sigma.log() / 4


class SkipTunablePrecond(torch.nn.Module):
    """What every preconditioning shares: ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)`` around a
    skip-tunable backbone ``model``, labels, and the ``skip_window`` buffer.

    ``skip_window`` (non-persistent, ``[lo, hi]``) selects the samples whose sigma lies in ``[lo, hi]``;
    only those get the backbone's skip coefficients. Subclasses give the four coefficients in
    ``_coefficients``. ``native_dtypes``: the dtypes ``forward(..., backbone_dtype=...)`` runs the
    backbone in natively (every layer casts its weights to its input's dtype; embeddings and the
    preconditioning stay float32), which the fast path uses instead of autocast.
    """

    skip_window: torch.Tensor
    model: SkipTunableBackbone
    img_resolution: int
    img_channels: int
    label_dim: int
    use_fp16: bool
    sigma_min: float
    sigma_max: float
    supports_sigma_window: ClassVar[bool] = True
    native_dtypes: ClassVar[frozenset[torch.dtype]] = frozenset({torch.bfloat16, torch.float16})

    def _record(self, init_kwargs: dict[str, Any]) -> None:
        """Keep the constructor arguments (so save_checkpoint() can rebuild the net without a config),
        the contract's attributes, and the ``skip_window`` buffer (default: every sigma)."""
        self.init_kwargs: dict[str, Any] = copy.deepcopy(init_kwargs)
        self.img_resolution = init_kwargs["img_resolution"]
        self.img_channels = init_kwargs["img_channels"]
        self.label_dim = init_kwargs["label_dim"]
        self.use_fp16 = init_kwargs["use_fp16"]
        window = torch.tensor([-math.inf, math.inf], dtype=torch.float32)
        self.register_buffer("skip_window", window, persistent=False)

    def _setup(self, init_kwargs: dict[str, Any], model_type: str, model_kwargs: dict[str, Any]) -> None:
        """EDM's way: record the arguments, then build the backbone ``model_type`` from :data:`BACKBONES`."""
        self._record({**init_kwargs, "model_type": model_type, **model_kwargs})
        self.model = build_backbone(
            model_type,
            img_resolution=self.img_resolution,
            in_channels=self.img_channels,
            out_channels=self.img_channels,
            label_dim=self.label_dim,
            **model_kwargs,
        )

    def _coefficients(self, sigma: torch.Tensor) -> Coefficients:
        """``(c_skip, c_out, c_in, c_noise)`` for float32 sigma ``[N, 1, 1, 1]``."""
        raise NotImplementedError

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
        force_fp32: bool = False,
        *,
        backbone_dtype: torch.dtype | None = None,
        **model_kwargs: Any,
    ) -> torch.Tensor:
        """``D(x, sigma)`` in float32. The backbone runs at ``backbone_dtype`` when given (the fast
        path's bf16), else by EDM's rule: float16 where ``use_fp16`` on CUDA, unless ``force_fp32``."""
        x = x.to(torch.float32)
        sigma = as_sigma(sigma, x)
        labels = precond_labels(class_labels, self.label_dim, x.device)
        fp16 = self.use_fp16 and not force_fp32 and x.device.type == "cuda"
        dtype = backbone_dtype or (torch.float16 if fp16 else torch.float32)
        c_skip, c_out, c_in, c_noise = self._coefficients(sigma)
        skip_mask = window_mask(self.skip_window, sigma)
        f_x = self.model(
            (c_in * x).to(dtype), c_noise.flatten(), class_labels=labels, skip_mask=skip_mask, **model_kwargs
        )
        return c_skip * x + c_out * f_x.to(torch.float32)

    def round_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        return torch.as_tensor(sigma)
