"""Building blocks of the EDM backbones (DDPM++, NCSN++, ADM), state-dict compatible with NVlabs/edm.

Parameter and buffer names, shapes and persistence follow EDM's ``training/networks.py`` so that a
checkpoint's ``state_dict`` loads with ``strict=True``. Every layer casts its weights to the input's
dtype, which is how EDM runs a float32 network at float16 (``use_fp16``) without storing fp16 weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from skiptune.errors import SkiptuneError
from skiptune.nets.fused_norm import group_norm_act

InitKwargs = dict[str, Any]

INIT_MODES = ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal")


def weight_init(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """Random initial weights of ``shape`` for one of EDM's four init modes."""
    uniform = torch.rand(*shape) * 2 - 1
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * uniform
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * uniform
    normal = torch.randn(*shape)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * normal
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * normal
    raise SkiptuneError(f"init_mode {mode!r} is not known; expected one of {', '.join(INIT_MODES)}")


class Linear(torch.nn.Module):
    """Fully connected layer (EDM layout: ``weight [out, in]``, optional ``bias [out]``)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init_mode: str = "kaiming_normal",
        init_weight: float = 1,
        init_bias: float = 0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans: dict[str, Any] = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = torch.nn.Parameter(weight_init([out_features, in_features], **fans) * init_weight)
        self.bias = torch.nn.Parameter(weight_init([out_features], **fans) * init_bias) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight.to(x.dtype).t()
        if self.bias is not None:
            y = y.add_(self.bias.to(x.dtype))
        return y


def _resample_filter(taps: Sequence[float]) -> torch.Tensor:
    """Separable 2-D FIR filter ``[1, 1, k, k]`` with unit DC gain, built from 1-D ``taps``."""
    f = torch.as_tensor(list(taps), dtype=torch.float32)
    return torch.outer(f, f).unsqueeze(0).unsqueeze(1) / f.sum().square()


class Conv2d(torch.nn.Module):
    """Convolution with optional 2x up/down resampling by a FIR filter.

    ``kernel=0`` gives a pure resampler without weights (EDM's ``aux_down``/``aux_up``). The
    ``resample_filter`` buffer is persistent and present only when resampling, as in EDM.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        bias: bool = True,
        up: bool = False,
        down: bool = False,
        resample_filter: Sequence[float] = (1, 1),
        fused_resample: bool = False,
        init_mode: str = "kaiming_normal",
        init_weight: float = 1,
        init_bias: float = 0,
    ) -> None:
        if up and down:
            raise SkiptuneError("Conv2d got up=True and down=True; choose at most one of them")
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        k2 = kernel * kernel
        fans: dict[str, Any] = dict(mode=init_mode, fan_in=in_channels * k2, fan_out=out_channels * k2)
        shape = [out_channels, in_channels, kernel, kernel]
        self.weight = torch.nn.Parameter(weight_init(shape, **fans) * init_weight) if kernel else None
        self.bias = (
            torch.nn.Parameter(weight_init([out_channels], **fans) * init_bias) if kernel and bias else None
        )
        self.resample_filter: torch.Tensor | None
        self.register_buffer("resample_filter", _resample_filter(resample_filter) if up or down else None)
        # A [1, 1] filter is a 2x2 box: up-sampling is then nearest-neighbour repetition and
        # down-sampling 2x2 average pooling, which are far faster than EDM's depthwise convolutions
        # (same values; the pooled mean may differ from the weighted sum in the last bit).
        taps = [float(t) for t in resample_filter]
        self._box = len(taps) == 2 and taps[0] == taps[1] != 0

    def forward(self, x: torch.Tensor, add_bias: bool = True) -> torch.Tensor:
        """The convolution; ``add_bias=False`` leaves the bias to the caller (a fused group norm)."""
        w = self.weight.to(x.dtype) if self.weight is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        if f is not None and self.up:
            x = self._up(x, f, w)
        elif f is not None and self.down:
            x = self._down(x, f, w)
        elif w is not None:
            x = torch.nn.functional.conv2d(x, w, padding=w.shape[-1] // 2)
        if self.bias is not None and add_bias:
            x = x.add_(self.bias.to(x.dtype).reshape(1, -1, 1, 1))
        return x

    def _up(self, x: torch.Tensor, f: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2
        fused = self.fused_resample and w is not None
        if self._box:  # f_pad == 0: the transposed conv repeats each pixel into a 2x2 block
            x = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            # The filter is scaled by 4 because a stride-2 transposed conv spreads each pixel over 4.
            taps = f.mul(4).tile([self.in_channels, 1, 1, 1])
            pad = max(f_pad - w_pad, 0) if fused else f_pad
            x = torch.nn.functional.conv_transpose2d(x, taps, groups=self.in_channels, stride=2, padding=pad)
        if w is not None:
            x = torch.nn.functional.conv2d(x, w, padding=max(w_pad - f_pad, 0) if fused else w_pad)
        return x

    def _down(self, x: torch.Tensor, f: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2
        if self.fused_resample and w is not None:
            # Convolve first, then filter+decimate the (cheaper after stride) output channels.
            x = torch.nn.functional.conv2d(x, w, padding=w_pad + f_pad)
            return self._decimate(x, f, self.out_channels, pad=0)
        x = self._decimate(x, f, self.in_channels, pad=f_pad)
        if w is not None:
            x = torch.nn.functional.conv2d(x, w, padding=w_pad)
        return x

    def _decimate(self, x: torch.Tensor, f: torch.Tensor, channels: int, *, pad: int) -> torch.Tensor:
        """Filter with ``f`` and keep every second pixel (EDM's stride-2 depthwise convolution)."""
        if self._box:  # pad == 0 for a 2-tap filter
            return torch.nn.functional.avg_pool2d(x, 2)
        taps = f.tile([channels, 1, 1, 1])
        return torch.nn.functional.conv2d(x, taps, groups=channels, stride=2, padding=pad)


class GroupNorm(torch.nn.Module):
    """Group normalisation with at least ``min_channels_per_group`` channels in each group.

    :meth:`act` is the norm with what follows it in a block (bias, modulation, SiLU), fused on CUDA
    bf16/fp16 channels_last inputs unless ``fused`` is False (see ``skiptune.nets.fused_norm``).
    """

    def __init__(
        self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))
        self.fused = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.group_norm(
            x,
            num_groups=self.num_groups,
            weight=self.weight.to(x.dtype),
            bias=self.bias.to(x.dtype),
            eps=self.eps,
        )

    def act(
        self,
        x: torch.Tensor,
        *,
        in_bias: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
        shift: torch.Tensor | None = None,
        silu: bool = True,
    ) -> torch.Tensor:
        """``silu(norm(x + in_bias) * (1 + scale) + shift)``; ``in_bias`` ``[C]`` or ``[N, C]``, ``scale``
        and ``shift`` ``[N, C]``, each optional; ``silu=False`` skips the activation."""
        return group_norm_act(
            x,
            self.weight,
            self.bias,
            self.num_groups,
            self.eps,
            in_bias,
            scale,
            shift,
            silu,
            fused=self.fused,
        )


def self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention over pixels: ``q, k, v`` are ``[..., C, P]`` (leading dims: batch, heads), same out.

    Equals EDM's ``softmax(q^T k / sqrt(C))`` followed by the weighted sum of ``v``; the fused kernel
    accumulates in float32 like EDM's AttentionOp and avoids materialising the ``P x P`` weights.
    """
    lead = q.shape[:-2]
    # SDPA's fused kernels (flash, memory-efficient, cuDNN) take only 4-D inputs whose last dimension
    # is contiguous; anything else runs its math fallback, which upcasts bf16 to float32 and multiplies
    # on the CUDA cores (43% of ADM's forward when measured). So: [B, 1, P, C], contiguous.
    q, k, v = (t.flatten(0, -3).transpose(1, 2).unsqueeze(1).contiguous() for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return out.squeeze(1).transpose(1, 2).unflatten(0, lead)


class UNetBlock(torch.nn.Module):
    """Residual block with optional up/down resampling and self-attention (DDPM++, NCSN++, ADM)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        num_heads: int | None = None,
        channels_per_head: int = 64,
        dropout: float = 0,
        skip_scale: float = 1,
        eps: float = 1e-5,
        resample_filter: Sequence[float] = (1, 1),
        resample_proj: bool = False,
        adaptive_scale: bool = True,
        init: InitKwargs | None = None,
        init_zero: InitKwargs | None = None,
        init_attn: InitKwargs | None = None,
    ) -> None:
        super().__init__()
        init = {} if init is None else init
        init_zero = {"init_weight": 0} if init_zero is None else init_zero
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale
        resample: dict[str, Any] = dict(up=up, down=down, resample_filter=resample_filter)

        self.norm0 = GroupNorm(num_channels=in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels=in_channels, out_channels=out_channels, kernel=3, **resample, **init)
        affine_out = out_channels * (2 if adaptive_scale else 1)
        self.affine = Linear(in_features=emb_channels, out_features=affine_out, **init)
        self.norm1 = GroupNorm(num_channels=out_channels, eps=eps)
        self.conv1 = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=3, **init_zero)

        self.skip: Conv2d | None = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(
                in_channels=in_channels, out_channels=out_channels, kernel=kernel, **resample, **init
            )

        if self.num_heads:
            self.norm2 = GroupNorm(num_channels=out_channels, eps=eps)
            attn_init = init_attn if init_attn is not None else init
            self.qkv = Conv2d(in_channels=out_channels, out_channels=out_channels * 3, kernel=1, **attn_init)
            self.proj = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=1, **init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        shortcut = x
        # conv0's bias and the embedding go into the second norm (one fused pass on the GPU).
        x = self.conv0(self.norm0.act(x), add_bias=False)
        params = self.affine(emb)
        if self.adaptive_scale:
            scale, shift = params.chunk(chunks=2, dim=1)
            x = self.norm1.act(x, in_bias=self.conv0.bias, scale=scale, shift=shift)
        else:
            x = self.norm1.act(x, in_bias=params if self.conv0.bias is None else params + self.conv0.bias)
        x = self.conv1(torch.nn.functional.dropout(x, p=self.dropout, training=self.training))
        x = x.add_(self.skip(shortcut) if self.skip is not None else shortcut)
        x = x * self.skip_scale
        if self.num_heads:
            x = self._attend(x)
        return x

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        heads = self.num_heads
        # EDM stores qkv's output channels per head as [c_head, 3] (q, k, v interleaved). Read in
        # [3, head, c_head] order instead (a gather of the small 1x1 weight, the state dict unchanged),
        # the channels_last output holds q, k and v as [N, P, head, c_head] views with a contiguous last
        # dimension, which SDPA's fused kernels take, and the result comes back channels_last. Eager
        # mode copies nothing; Inductor still copies q, k, v for cuDNN attention (measured on ADM:
        # 3 x 1.0 ms per forward, against 3 x 1.8 ms with the interleaved layout).
        order = torch.arange(3 * c, device=x.device).reshape(heads, c // heads, 3).permute(2, 0, 1).flatten()
        weight = self.qkv.weight[order].to(x.dtype)  # type: ignore[index]
        bias = self.qkv.bias[order].to(x.dtype)  # type: ignore[index]
        qkv = torch.nn.functional.conv2d(self.norm2.act(x, silu=False), weight, bias)
        q, k, v = qkv.permute(0, 2, 3, 1).reshape(n, h * w, 3, heads, c // heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [N, head, P, c_head]
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        a = a.transpose(1, 2).reshape(n, h, w, c).permute(0, 3, 1, 2)  # channel = head * c_head + i
        x = self.proj(a).add_(x)
        return x * self.skip_scale


class PositionalEmbedding(torch.nn.Module):
    """Sinusoidal embedding ``[cos(x f), sin(x f)]`` of the noise level (DDPM++, ADM)."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(start=0, end=half, dtype=torch.float32, device=x.device)
        freqs = freqs / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(torch.nn.Module):
    """Random Fourier features of the noise level (NCSN++); ``freqs`` is a persistent buffer."""

    def __init__(self, num_channels: int, scale: float = 16) -> None:
        super().__init__()
        self.freqs: torch.Tensor
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)
