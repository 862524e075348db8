"""Triton kernels of the fused group norm (+ input bias, modulation, SiLU) on channels_last tensors.

Imported only where Triton is present and a tensor qualifies (see ``skiptune.nets.fused_norm``). Three
kernels, every one reading rows of ``BLOCK_C`` contiguous channels (a channels_last tensor is
``[N, H*W, C]`` in memory):

1. ``_tile_stats``: per (sample, tile of ``BLOCK_P`` pixels, channel block) the per-channel mean and
   sum of squared deviations (computed in registers, two passes over the loaded tile, so no
   ``E[x^2] - E[x]^2`` cancellation);
2. ``_fold``: per (sample, group) Chan's merge of those partials into the group's mean and variance,
   folded with the affine weights, the input bias and the modulation into ``y = a * x + b`` per
   (sample, channel);
3. ``_apply``: ``silu(a * x + b)`` over the tensor, visiting tiles in the reverse order of
   ``_tile_stats`` so that its first reads find the last tiles the statistics pass left in L2.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl


@triton.jit
def _tile(pid, HW, C, TILES_P, TILES_C, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    """Program ``pid``'s tile: sample, pixel-tile index, channels, row mask, element offsets."""
    tc = pid % TILES_C
    tp = (pid // TILES_C) % TILES_P
    n = pid // (TILES_C * TILES_P)
    p = tp * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tc * BLOCK_C + tl.arange(0, BLOCK_C)
    return n, tp, c, (p < HW)[:, None], (n * HW + p)[:, None] * C + c[None, :]


@triton.jit
def _tile_stats(x_ptr, mean_ptr, m2_ptr, HW, C, TILES_P, TILES_C,
                BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    n, tp, c, mask, offs = _tile(tl.program_id(0), HW, C, TILES_P, TILES_C, BLOCK_P, BLOCK_C)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    count = tl.minimum(HW - tp * BLOCK_P, BLOCK_P).to(tl.float32)
    mean = tl.sum(x, axis=0) / count
    dev = tl.where(mask, x - mean[None, :], 0.0)
    out = (n * TILES_P + tp) * C + c  # partials laid out [N, TILES_P, C]
    tl.store(mean_ptr + out, mean)
    tl.store(m2_ptr + out, tl.sum(dev * dev, axis=0))


@triton.jit
def _fold(mean_ptr, m2_ptr, w_ptr, b_ptr, ib_ptr, scale_ptr, shift_ptr, a_ptr, c_ptr,
          HW, C, G, CPG, TILES_P, ib_stride, eps,
          HAS_IB: tl.constexpr, HAS_MOD: tl.constexpr,
          BLOCK_P: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_G: tl.constexpr):  # fmt: skip
    pid = tl.program_id(0)
    n = pid // G
    g = pid % G
    t = tl.arange(0, BLOCK_T)
    j = tl.arange(0, BLOCK_G)
    ch = g * CPG + j
    in_group = j < CPG
    mask = (t < TILES_P)[:, None] & in_group[None, :]
    offs = (n * TILES_P + t)[:, None] * C + ch[None, :]
    mean = tl.load(mean_ptr + offs, mask=mask, other=0.0)
    m2 = tl.load(m2_ptr + offs, mask=mask, other=0.0)
    ib = tl.zeros([BLOCK_G], dtype=tl.float32)
    if HAS_IB:  # a per-channel shift moves each channel's mean and leaves its deviations alone
        ib = tl.load(ib_ptr + n * ib_stride + ch, mask=in_group, other=0.0).to(tl.float32)
        mean = tl.where(mask, mean + ib[None, :], 0.0)
    count = tl.where(t < TILES_P, tl.minimum(HW - t * BLOCK_P, BLOCK_P), 0).to(tl.float32)
    total = HW * CPG * 1.0
    group_mean = tl.sum(mean * count[:, None]) / total
    dev = tl.where(mask, mean - group_mean, 0.0)
    var = (tl.sum(m2) + tl.sum(count[:, None] * dev * dev)) / total
    rstd = 1.0 / tl.sqrt(var + eps)
    a = rstd * tl.load(w_ptr + ch, mask=in_group, other=0.0).to(tl.float32)
    b = (ib - group_mean) * a + tl.load(b_ptr + ch, mask=in_group, other=0.0).to(tl.float32)
    if HAS_MOD:  # silu(shift + norm(x) * (scale + 1)), EDM's adaptive scale
        s = tl.load(scale_ptr + n * C + ch, mask=in_group, other=0.0).to(tl.float32) + 1.0
        a = a * s
        b = b * s + tl.load(shift_ptr + n * C + ch, mask=in_group, other=0.0).to(tl.float32)
    tl.store(a_ptr + n * C + ch, a, mask=in_group)
    tl.store(c_ptr + n * C + ch, b, mask=in_group)


@triton.jit
def _apply(x_ptr, a_ptr, c_ptr, y_ptr, HW, C, TILES_P, TILES_C, PROGRAMS,
           SILU: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    pid = PROGRAMS - 1 - tl.program_id(0)
    n, _, c, mask, offs = _tile(pid, HW, C, TILES_P, TILES_C, BLOCK_P, BLOCK_C)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = x * tl.load(a_ptr + n * C + c)[None, :] + tl.load(c_ptr + n * C + c)[None, :]
    if SILU:
        y = y * tl.sigmoid(y)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def channel_block(channels: int) -> int:
    """The channel block: the largest power of two up to 64 dividing ``channels`` (0 when below 8)."""
    block = 64
    while block >= 8 and channels % block:
        block //= 2
    return block if block >= 8 else 0


def launch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    groups: int,
    eps: float,
    in_bias: torch.Tensor | None,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
    silu: bool,
) -> torch.Tensor:
    """``silu(group_norm(x + in_bias) * (1 + scale) + shift)`` of a ``[N, C, H, W]`` tensor by the three
    kernels; ``in_bias`` ``[C]`` or ``[N, C]``, ``scale``/``shift`` ``[N, C]`` or None; channels_last out."""
    # No-ops for the tensors skiptune.nets.fused_norm.fusable admits and the [N, C] vectors it passes.
    x = x.contiguous(memory_format=torch.channels_last)
    in_bias, scale, shift = (None if v is None else v.contiguous() for v in (in_bias, scale, shift))
    n, c, h, w = x.shape
    hw, cpg = h * w, c // groups
    block_c = channel_block(c)
    block_p = min(max(8192 // block_c, 16), 256, triton.next_power_of_2(hw))
    tiles_p, tiles_c = triton.cdiv(hw, block_p), c // block_c
    programs = n * tiles_p * tiles_c
    part = torch.empty((2, n, tiles_p, c), device=x.device, dtype=torch.float32)
    fold = torch.empty((2, n, c), device=x.device, dtype=torch.float32)
    y = torch.empty_like(x, memory_format=torch.channels_last)
    unused = fold  # a pointer for absent inputs, never read: the HAS_* flags switch those loads off
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():  # CPU: the interpreter
        _tile_stats[(programs,)](x, part[0], part[1], hw, c, tiles_p, tiles_c,
                                 BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4)  # fmt: skip
        _fold[(n * groups,)](
            part[0], part[1], weight, bias,
            unused if in_bias is None else in_bias,
            unused if scale is None else scale,
            unused if shift is None else shift,
            fold[0], fold[1], hw, c, groups, cpg, tiles_p,
            0 if in_bias is None or in_bias.numel() == c else c, eps,
            HAS_IB=in_bias is not None, HAS_MOD=scale is not None, BLOCK_P=block_p,
            BLOCK_T=triton.next_power_of_2(tiles_p), BLOCK_G=triton.next_power_of_2(cpg), num_warps=1,
        )  # fmt: skip
        _apply[(programs,)](x, fold[0], fold[1], y, hw, c, tiles_p, tiles_c, programs,
                            SILU=silu, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4)  # fmt: skip
    return y
