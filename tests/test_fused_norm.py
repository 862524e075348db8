"""The fused group norm + modulation + SiLU: its reference composition, its Triton kernels (run by
Triton's interpreter on the CPU here, natively on a GPU where one is present) and the blocks using it."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from skiptune.errors import SkiptuneError
from skiptune.nets.fused_norm import fusable, group_norm_act, group_norm_act_reference
from skiptune.nets.layers import GroupNorm, UNetBlock

HAS_TRITON = importlib.util.find_spec("triton") is not None
CUDA = torch.cuda.is_available() and HAS_TRITON


def _inputs(n: int, c: int, h: int, w: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> dict:
    g = torch.Generator().manual_seed(n * 1000 + c)
    x = (torch.randn(n, c, h, w, generator=g) * 3 + 1).to(device=device, dtype=dtype)
    return dict(
        x=x.contiguous(memory_format=torch.channels_last),
        weight=torch.randn(c, generator=g).to(device),
        bias=torch.randn(c, generator=g).to(device),
        in_bias=torch.randn(n, c, generator=g).to(device),
        scale=torch.randn(n, c, generator=g).to(device),
        shift=torch.randn(n, c, generator=g).to(device),
    )


def test_reference_is_norm_then_modulation_then_silu() -> None:
    a = _inputs(2, 16, 5, 3)
    x = a["x"] + a["in_bias"].reshape(2, 16, 1, 1)
    norm = torch.nn.functional.group_norm(x, 4, a["weight"], a["bias"], 1e-5)
    want = torch.nn.functional.silu(
        norm * (1 + a["scale"].reshape(2, 16, 1, 1)) + a["shift"].reshape(2, 16, 1, 1)
    )
    got = group_norm_act_reference(
        a["x"], a["weight"], a["bias"], 4, 1e-5, a["in_bias"], a["scale"], a["shift"]
    )
    torch.testing.assert_close(got, want)
    plain = group_norm_act_reference(a["x"], a["weight"], a["bias"], 4, 1e-5, silu=False)
    torch.testing.assert_close(plain, torch.nn.functional.group_norm(a["x"], 4, a["weight"], a["bias"], 1e-5))


def test_cpu_takes_the_reference_path_and_scale_needs_shift() -> None:
    a = _inputs(2, 64, 4, 4, torch.bfloat16)
    assert not fusable(a["x"], 32)  # not on CUDA
    got = group_norm_act(a["x"], a["weight"], a["bias"], 32, 1e-5, scale=a["scale"], shift=a["shift"])
    want = group_norm_act_reference(
        a["x"], a["weight"], a["bias"], 32, 1e-5, scale=a["scale"], shift=a["shift"]
    )
    assert torch.equal(got, want)
    with pytest.raises(SkiptuneError, match="scale and shift"):
        group_norm_act(a["x"], a["weight"], a["bias"], 32, 1e-5, scale=a["scale"])


@pytest.mark.skipif(not HAS_TRITON, reason="needs Triton (CUDA builds of torch ship it)")
def test_channel_block_divides_the_channels() -> None:
    from skiptune.nets.fused_norm_kernels import channel_block

    assert [channel_block(c) for c in (128, 192, 576, 960, 1536, 48, 24, 4)] == [64, 64, 64, 64, 64, 16, 8, 0]


_INTERPRETED = """
import torch
from skiptune.nets.fused_norm_kernels import launch
from skiptune.nets.fused_norm import group_norm_act_reference
for n, c, h, w, groups in [(2, 64, 5, 7, 32), (3, 192, 4, 4, 32), (1, 48, 3, 3, 8)]:
    g = torch.Generator().manual_seed(c)
    x = (torch.randn(n, c, h, w, generator=g) * 3 + 1).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(c, generator=g), torch.randn(c, generator=g)
    for in_bias in (None, torch.randn(c, generator=g), torch.randn(n, c, generator=g)):
        for mod in (None, (torch.randn(n, c, generator=g), torch.randn(n, c, generator=g))):
            for silu in (True, False):
                s, t = mod or (None, None)
                got = launch(x, weight, bias, groups, 1e-5, in_bias, s, t, silu)
                want = group_norm_act_reference(x, weight, bias, groups, 1e-5, in_bias, s, t, silu)
                assert got.is_contiguous(memory_format=torch.channels_last)
                err = (got - want).abs().max().item()
                assert err < 1e-4, (n, c, h, w, in_bias is None, mod is None, silu, err)
print("interpreted kernels match")
"""


@pytest.mark.skipif(not HAS_TRITON, reason="needs Triton (CUDA builds of torch ship it)")
def test_kernels_match_the_reference_in_tritons_interpreter() -> None:
    # The interpreter is chosen when the kernels are defined, so it needs a fresh process.
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_INTERPRETED)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "interpreted kernels match" in out.stdout


# ------------------------------------------------------------------------------------------ on a GPU

SHAPES = [
    (8, 256, 32, 32, 32),
    (4, 192, 64, 64, 32),
    (4, 576, 16, 16, 32),
    (4, 1536, 8, 8, 32),
    (3, 128, 7, 9, 32),
]


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_kernels_on_the_gpu_match_float32(shape: tuple[int, ...]) -> None:
    n, c, h, w, groups = shape
    a = _inputs(n, c, h, w, torch.bfloat16, "cuda")
    assert fusable(a["x"], groups)
    for keys in ((), ("in_bias",), ("in_bias", "scale", "shift")):
        kw = {k: a[k] for k in keys}
        got = group_norm_act(a["x"], a["weight"], a["bias"], groups, 1e-5, **kw)
        want = group_norm_act_reference(a["x"].float(), a["weight"], a["bias"], groups, 1e-5, **kw)
        assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
        err = ((got.float() - want).norm() / want.norm()).item()
        assert err < 5e-3, (shape, keys, err)  # bf16 output rounding only


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("adaptive_scale", [True, False])
def test_compiled_block_with_fused_norms_matches_eager_and_unfused(adaptive_scale: bool) -> None:
    torch.manual_seed(0)
    block = UNetBlock(128, 128, emb_channels=64, attention=True, num_heads=2, adaptive_scale=adaptive_scale,
                      init_zero={}).cuda().eval()  # fmt: skip
    block.to(memory_format=torch.channels_last)
    x = torch.randn(4, 128, 16, 16, device="cuda").to(torch.bfloat16, memory_format=torch.channels_last)
    emb = torch.randn(4, 64, device="cuda")
    with torch.inference_mode():
        eager = block(x, emb)
        compiled = torch.compile(block, fullgraph=True)(x, emb)
        for m in block.modules():
            if isinstance(m, GroupNorm):
                m.fused = False
        unfused = block(x, emb)
    torch.testing.assert_close(compiled, eager, atol=2e-2, rtol=2e-2)
    err = ((eager.float() - unfused.float()).norm() / unfused.float().norm()).item()
    assert err < 1e-2, err


def _block_as_edm_writes_it(block: UNetBlock, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """EDM's UNetBlock.forward (no attention), op by op: the composition the fused op replaces."""
    silu = torch.nn.functional.silu
    shortcut = x
    x = block.conv0(silu(block.norm0(x)))
    params = block.affine(emb).unsqueeze(2).unsqueeze(3)
    if block.adaptive_scale:
        scale, shift = params.chunk(chunks=2, dim=1)
        x = silu(torch.addcmul(shift, block.norm1(x), scale + 1))
    else:
        x = silu(block.norm1(x + params))
    x = block.conv1(x)
    x = x + (block.skip(shortcut) if block.skip is not None else shortcut)
    return x * block.skip_scale


@pytest.mark.parametrize("adaptive_scale", [True, False])
@pytest.mark.parametrize("down", [False, True])
def test_block_equals_edms_composition(adaptive_scale: bool, down: bool) -> None:
    torch.manual_seed(0)
    block = UNetBlock(32, 48, emb_channels=16, down=down, adaptive_scale=adaptive_scale, init_zero={}).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # non-trivial norm weights and biases
        x, emb = torch.randn(3, 32, 8, 8), torch.randn(3, 16)
        want = _block_as_edm_writes_it(block, x, emb)
        torch.testing.assert_close(block(x, emb), want, atol=1e-5, rtol=1e-5)
