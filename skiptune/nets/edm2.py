"""EDM2's magnitude-preserving UNet and its ``Precond`` (Karras et al. 2024), skip-tunable.

Constructor keywords, defaults and ``state_dict`` keys match NVlabs/edm2
``training/networks_edm2.py``, so EDM2 checkpoints load with ``strict=True``. Only inference is
re-implemented: EDM2's in-place "forced" weight normalisation during training is left out (the
forward-time normalisation, which defines the network's output, is kept).

Skip-Tuning works as for our EDM nets (``skiptune.nets.edm``): :class:`EDM2UNet` owns the
non-persistent ``skip_coefficients`` buffer and multiplies the j-th skip its decoder consumes
(j = 0 innermost) by ``coef[j]`` before the magnitude-preserving concatenation; :class:`EDM2Precond`
owns ``skip_window`` and exposes its UNet both as ``unet`` (EDM2's name, the state-dict prefix) and
as ``model`` (the name our sampling and Skip-Tuning code reads).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch

from skiptune.errors import SkiptuneError
from skiptune.nets.base import (
    Coefficients,
    SkipTunableBackbone,
    SkipTunablePrecond,
    as_sigma,
    check_resolution,
    edm_coefficients,
)
from skiptune.nets.layers import self_attention

__all__ = ["EDM2Block", "EDM2Precond", "EDM2UNet", "MPConv", "MPFourier", "mp_cat", "mp_silu", "mp_sum"]


def normalize(x: torch.Tensor, dim: Sequence[int] | int | None = None, eps: float = 1e-4) -> torch.Tensor:
    """``x`` scaled to unit root-mean-square over ``dim`` (default: all but the first dimension)."""
    dims = list(range(1, x.ndim)) if dim is None else dim
    norm = torch.linalg.vector_norm(x, dim=dims, keepdim=True, dtype=torch.float32)
    # The norm of n elements becomes an RMS by sqrt(1/n); eps keeps zero vectors finite.
    norm = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


def resample(x: torch.Tensor, f: Sequence[float], mode: str) -> torch.Tensor:
    """Depthwise 2x down- or upsampling with the separable filter ``f`` (``mode='keep'``: identity)."""
    if mode == "keep":
        return x
    taps = torch.tensor(list(f), dtype=torch.float32)
    taps = taps / taps.sum()
    kernel = torch.outer(taps, taps)[None, None].to(device=x.device, dtype=x.dtype)
    kernel = kernel.tile([x.shape[1], 1, 1, 1])
    pad = (len(taps) - 1) // 2
    if mode == "down":
        return torch.nn.functional.conv2d(x, kernel, groups=x.shape[1], stride=2, padding=pad)
    return torch.nn.functional.conv_transpose2d(x, kernel * 4, groups=x.shape[1], stride=2, padding=pad)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU rescaled to keep unit magnitude for unit-normal input."""
    return torch.nn.functional.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """Magnitude-preserving blend ``(1 - t) a + t b`` of two unit-magnitude tensors."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Magnitude-preserving concatenation; ``t`` balances ``a`` (0) against ``b`` (1)."""
    na, nb = a.shape[dim], b.shape[dim]
    scale = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    wa = scale / math.sqrt(na) * (1 - t)
    wb = scale / math.sqrt(nb) * t
    return torch.cat([wa * a, wb * b], dim=dim)


class MPFourier(torch.nn.Module):
    """Random Fourier features ``sqrt(2) cos(2 pi f x + phi)`` of a scalar per sample."""

    freqs: torch.Tensor
    phases: torch.Tensor

    def __init__(self, num_channels: int, bandwidth: float = 1) -> None:
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.to(torch.float32).outer(self.freqs.to(torch.float32))
        y = (y + self.phases.to(torch.float32)).cos() * math.sqrt(2)
        return y.to(x.dtype)


class MPConv(torch.nn.Module):
    """Weight-normalised convolution (``kernel=[kh, kw]``) or linear layer (``kernel=[]``), no bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int]) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.weight = torch.nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1) -> torch.Tensor:
        w = normalize(self.weight.to(torch.float32))
        w = w * (gain / math.sqrt(w[0].numel()))  # unit-magnitude output for unit-magnitude input
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return torch.nn.functional.conv2d(x, w, padding=(w.shape[-1] // 2,))


class EDM2Block(torch.nn.Module):
    """Encoder (``flavor='enc'``) or decoder (``'dec'``) residual block with optional self-attention."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        flavor: str = "enc",
        resample_mode: str = "keep",
        resample_filter: Sequence[float] = (1, 1),
        attention: bool = False,
        channels_per_head: int = 64,
        dropout: float = 0,
        res_balance: float = 0.3,
        attn_balance: float = 0.3,
        clip_act: float | None = 256,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.flavor = flavor
        self.resample_filter = list(resample_filter)
        self.resample_mode = resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout = dropout
        self.res_balance = res_balance
        self.attn_balance = attn_balance
        self.clip_act = clip_act
        self.emb_gain = torch.nn.Parameter(torch.zeros([]))
        # Encoder blocks project the input first; decoder blocks project it only for the residual sum.
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, kernel=[3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=[])
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=[3, 3])
        self.conv_skip = (
            MPConv(in_channels, out_channels, kernel=[1, 1]) if in_channels != out_channels else None
        )
        self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=[1, 1]) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, kernel=[1, 1]) if self.num_heads else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = resample(x, self.resample_filter, self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm
        y = self.conv_res0(mp_silu(x))
        scale = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * scale[:, :, None, None].to(y.dtype))
        if self.training and self.dropout:
            y = torch.nn.functional.dropout(y, p=self.dropout)
        y = self.conv_res1(y)
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)
        if self.attn_qkv is not None and self.attn_proj is not None:
            x = mp_sum(
                x, self.attn_proj(self._attention(self.attn_qkv(x)).reshape(x.shape)), t=self.attn_balance
            )
        if self.clip_act is not None:
            x = x.clip(-self.clip_act, self.clip_act)
        return x

    def _attention(self, qkv: torch.Tensor) -> torch.Tensor:
        """Cosine attention: q, k, v pixel-normalised per head; ``[N, heads, C/heads, HW]`` out."""
        n, _, h, w = qkv.shape
        qkv = normalize(qkv.reshape(n, self.num_heads, -1, 3, h * w), dim=2)
        q, k, v = qkv.unbind(3)
        return self_attention(q, k, v)


_BLOCK_KEYWORDS = frozenset(inspect.signature(EDM2Block).parameters) - {
    "in_channels",
    "out_channels",
    "emb_channels",
    "flavor",
    "resample_mode",
    "attention",
}


def _check_unet_config(
    img_resolution: int, channel_mult: Sequence[int], block_kwargs: dict[str, Any]
) -> None:
    """Reject configurations EDM2 would only fail on later with a shape or type error."""
    unknown = sorted(set(block_kwargs) - _BLOCK_KEYWORDS)
    if unknown:
        raise SkiptuneError(
            f"EDM2 UNet got unknown keyword arguments {unknown}; block keywords are "
            f"{', '.join(sorted(_BLOCK_KEYWORDS))}; remove the others (EDM's model_type and its "
            "backbone keywords belong to EDMPrecond)"
        )
    check_resolution(img_resolution, channel_mult, example="[1, 2, 3, 4]")


class EDM2UNet(SkipTunableBackbone):
    """EDM2's UNet: every encoder output is a long skip, concatenated by ``mp_cat`` in the decoder."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int,
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        channel_mult_noise: int | None = None,
        channel_mult_emb: int | None = None,
        num_blocks: int = 3,
        attn_resolutions: Sequence[int] = (16, 8),
        label_balance: float = 0.5,
        concat_balance: float = 0.5,
        **block_kwargs: Any,
    ) -> None:
        _check_unet_config(img_resolution, channel_mult, block_kwargs)
        super().__init__()
        cblock = [model_channels * m for m in channel_mult]
        cnoise = model_channels * channel_mult_noise if channel_mult_noise is not None else cblock[0]
        cemb = model_channels * channel_mult_emb if channel_mult_emb is not None else max(cblock)
        self.label_dim = label_dim
        self.label_balance = label_balance
        self.concat_balance = concat_balance
        self.out_gain = torch.nn.Parameter(torch.zeros([]))
        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, kernel=[])
        self.emb_label = MPConv(label_dim, cemb, kernel=[]) if label_dim else None

        def block(cin: int, cout: int, flavor: str, **kw: Any) -> EDM2Block:
            return EDM2Block(cin, cout, cemb, flavor=flavor, **kw, **block_kwargs)

        self.enc = torch.nn.ModuleDict()
        cout = img_channels + 1  # the input gets a constant-one channel
        for level, channels in enumerate(cblock):
            res = img_resolution >> level
            if level == 0:
                cout, cin = channels, cout
                self.enc[f"{res}x{res}_conv"] = MPConv(cin, cout, kernel=[3, 3])
            else:
                self.enc[f"{res}x{res}_down"] = block(cout, cout, "enc", resample_mode="down")
            for idx in range(num_blocks):
                cout, cin = channels, cout
                attn = res in attn_resolutions
                self.enc[f"{res}x{res}_block{idx}"] = block(cin, cout, "enc", attention=attn)
        self._init_skips([int(m.out_channels) for m in self.enc.values()])  # type: ignore[arg-type]

        self.dec = torch.nn.ModuleDict()
        skips = list(reversed(self._skip_channels))
        for level, channels in reversed(list(enumerate(cblock))):
            res = img_resolution >> level
            if level == len(cblock) - 1:
                self.dec[f"{res}x{res}_in0"] = block(cout, cout, "dec", attention=True)
                self.dec[f"{res}x{res}_in1"] = block(cout, cout, "dec")
            else:
                self.dec[f"{res}x{res}_up"] = block(cout, cout, "dec", resample_mode="up")
            for idx in range(num_blocks + 1):
                cout, cin = channels, cout + skips.pop()
                attn = res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = block(cin, cout, "dec", attention=attn)
        self.out_conv = MPConv(cout, img_channels, kernel=[3, 3])

    def _embed(self, noise_labels: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            labels = self._labels_for(class_labels, self.label_dim)
            emb = mp_sum(emb, self.emb_label(labels * math.sqrt(labels.shape[1])), t=self.label_balance)
        return mp_silu(emb)

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        skip_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        emb = self._embed(noise_labels, class_labels)
        factors = self._skip_factors(skip_mask)
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips: list[torch.Tensor] = []
        for module in self.enc.values():
            x = module(x) if isinstance(module, MPConv) else module(x, emb)
            skips.append(x)
        j = 0
        for name, module in self.dec.items():
            if "block" in name:
                x = mp_cat(x, self._scaled_skip(skips.pop(), factors, j), t=self.concat_balance)
                j += 1
            x = module(x, emb)
        return self.out_conv(x, gain=self.out_gain)


class EDM2Precond(SkipTunablePrecond):
    """EDM2 preconditioning ``D(x, sigma) = c_skip x + c_out F(c_in x, ln(sigma) / 4)`` (EDM's
    coefficients) and its uncertainty head ``u(sigma)`` (``return_logvar=True``).

    ``skip_window`` (non-persistent, ``[lo, hi]``) selects the samples whose sigma lies in
    ``[lo, hi]``; only those get the UNet's skip coefficients.
    """

    # EDM2 networks do not record a sigma range; these are EDM2's sampler defaults (generate_images.py).
    sigma_min: float = 0.002
    sigma_max: float = 80.0

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int,
        use_fp16: bool = True,
        sigma_data: float = 0.5,
        logvar_channels: int = 128,
        **unet_kwargs: Any,
    ) -> None:
        super().__init__()
        self._record(
            dict(
                img_resolution=img_resolution,
                img_channels=img_channels,
                label_dim=label_dim,
                use_fp16=use_fp16,
                sigma_data=sigma_data,
                logvar_channels=logvar_channels,
                **unet_kwargs,
            )
        )
        self.sigma_data = sigma_data
        self.unet = EDM2UNet(
            img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim, **unet_kwargs
        )
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, kernel=[])

    @property
    def model(self) -> EDM2UNet:  # type: ignore[override]  # read-only here: the UNet is ``unet``
        """The UNet under the name ``EDMPrecond`` uses (a property: no second state-dict prefix)."""
        return self.unet

    def _coefficients(self, sigma: torch.Tensor) -> Coefficients:
        return edm_coefficients(sigma, self.sigma_data)

    def forward(  # type: ignore[override]  # return_logvar=True returns a pair, as in EDM2
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
        force_fp32: bool = False,
        return_logvar: bool = False,
        *,
        backbone_dtype: torch.dtype | None = None,
        **unet_kwargs: Any,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``D(x, sigma)`` as :class:`SkipTunablePrecond`, with ``u(sigma)`` when ``return_logvar``."""
        d_x = super().forward(
            x, sigma, class_labels, force_fp32, backbone_dtype=backbone_dtype, **unet_kwargs
        )
        if not return_logvar:
            return d_x
        c_noise = as_sigma(sigma, x).flatten().log() / 4
        return d_x, self.logvar_linear(self.logvar_fourier(c_noise)).reshape(-1, 1, 1, 1)
