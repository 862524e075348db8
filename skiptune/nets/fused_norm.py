"""Group norm followed by what the UNet blocks do next, as one operation: ``silu(norm(x + b) * (1 + s) + t)``.

Every residual block of DDPM++, NCSN++ and ADM normalises a convolution's output, adds or multiplies in
the noise embedding and applies SiLU before the next convolution. Left to ``torch.compile`` that is a
statistics pass and an apply pass whose reads are strided across channels_last tensors (measured on an
H100: 42% of a DDPM++ forward). ``group_norm_act`` computes the same thing; on a CUDA bf16/fp16
channels_last tensor it runs the Triton kernels of ``fused_norm_kernels`` (registered as the custom op
``skiptune::group_norm_act``, which compiled graphs call as one step), elsewhere the plain composition
:func:`group_norm_act_reference`. Statistics and the affine/modulation arithmetic are float32 either way.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch

from skiptune.errors import SkiptuneError

_kernels: ModuleType | None
try:  # Triton ships with CUDA builds of torch; CPU-only builds run the reference composition
    from skiptune.nets import fused_norm_kernels as _kernels
except ImportError:
    _kernels = None

_FUSED_DTYPES = (torch.bfloat16, torch.float16)


def group_norm_act_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    groups: int,
    eps: float,
    in_bias: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    silu: bool = True,
) -> torch.Tensor:
    """``silu(group_norm(x + in_bias) * (1 + scale) + shift)`` with PyTorch ops, in ``x``'s dtype.

    ``in_bias`` is ``[C]`` or ``[N, C]``; ``scale`` and ``shift`` are ``[N, C]`` and come together.
    """
    if in_bias is not None:
        x = x + in_bias.to(x.dtype).reshape(-1, x.shape[1], 1, 1)
    y = torch.nn.functional.group_norm(x, groups, weight.to(x.dtype), bias.to(x.dtype), eps)
    if scale is not None and shift is not None:
        n, c = x.shape[:2]
        s, t = (v.to(x.dtype).reshape(n, c, 1, 1) for v in (scale, shift))
        y = torch.addcmul(t, y, s + 1)
    return torch.nn.functional.silu(y) if silu else y


def fusable(x: torch.Tensor, groups: int) -> bool:
    """Whether ``x`` takes the Triton path: Triton present, CUDA, bf16/fp16, channels_last, 32-bit
    indexable, and channels in blocks of at least 8 that the groups divide."""
    c = x.shape[1]
    return (
        _kernels is not None
        and x.dim() == 4
        and x.is_cuda
        and x.dtype in _FUSED_DTYPES
        and x.is_contiguous(memory_format=torch.channels_last)
        and x.numel() < 2**31
        and c % groups == 0
        and _kernels.channel_block(c) > 0
    )


def group_norm_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    groups: int,
    eps: float,
    in_bias: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    silu: bool = True,
    fused: bool = True,
) -> torch.Tensor:
    """:func:`group_norm_act_reference`'s result, through the fused kernels where ``x`` qualifies.

    ``fused=False`` always takes the reference composition (which ``torch.compile`` then fuses itself).
    """
    if (scale is None) != (shift is None):
        raise SkiptuneError("group_norm_act got only one of scale and shift; pass both or neither")
    if fused and fusable(x, groups):
        n, c = x.shape[:2]
        ib = None if in_bias is None else in_bias.reshape(-1, c).contiguous()
        s, t = (None if v is None else v.reshape(n, c).contiguous() for v in (scale, shift))
        op = torch.ops.skiptune.group_norm_act
        return op(x, weight, bias, groups, eps, ib, s, t, silu)  # type: ignore[no-any-return]
    return group_norm_act_reference(x, weight, bias, groups, eps, in_bias, scale, shift, silu)


if _kernels is not None:
    # An opaque custom op around the kernels' launcher: compiled graphs call it between their own
    # kernels (Inductor neither re-traces nor re-tunes the Triton code); the fake implementation gives
    # the output's shape and layout.
    _group_norm_act_op = torch.library.custom_op("skiptune::group_norm_act", _kernels.launch, mutates_args=())

    @_group_norm_act_op.register_fake
    def _(x: torch.Tensor, *args: Any) -> torch.Tensor:
        return torch.empty_like(x, memory_format=torch.channels_last)
