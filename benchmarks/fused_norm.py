"""Fused group norm + modulation + SiLU against torch.compile's own fusion of the same composition.

    python benchmarks/fused_norm.py [--out results.json]

Shapes are the activations of the issue-7 networks at their sampling batch sizes (DDPM++ CIFAR-10 at
512, ADM ImageNet-64 at 256). "GB/s" counts one read and one write of the tensor, the least any
implementation moves; the fused kernels read it twice (statistics, then apply). Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from skiptune.nets.fused_norm import fusable, group_norm_act, group_norm_act_reference

SHAPES = {  # name: (N, C, H, W)
    "ddpm++ 32x32x256": (512, 256, 32, 32),
    "ddpm++ 32x32x512 (decoder)": (512, 512, 32, 32),
    "ddpm++ 16x16x256": (512, 256, 16, 16),
    "adm 64x64x192": (256, 192, 64, 64),
    "adm 64x64x384 (decoder)": (256, 384, 64, 64),
    "adm 32x32x384": (256, 384, 32, 32),
    "adm 16x16x576": (256, 576, 16, 16),
    "adm 8x8x768": (256, 768, 8, 8),
}


def time_ms(fn: Any, repeats: int = 20) -> float:
    """GPU milliseconds per call: ``repeats`` calls captured in one CUDA graph, so host-side launch
    costs (several per call here) do not hide the kernels' own time."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeats):
            fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / repeats


def measure(shape: tuple[int, int, int, int]) -> dict[str, Any]:
    n, c = shape[:2]
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(shape, device="cuda", generator=g).to(torch.bfloat16, memory_format=torch.channels_last)
    weight, bias = torch.randn(c, device="cuda", generator=g), torch.randn(c, device="cuda", generator=g)
    in_bias = torch.randn(c, device="cuda", generator=g)
    scale, shift = (torch.randn(n, c, device="cuda", generator=g) for _ in range(2))
    args = (x, weight, bias, 32, 1e-5, in_bias, scale, shift)
    assert fusable(x, 32)
    compiled = torch.compile(group_norm_act_reference, dynamic=False)
    with torch.inference_mode():
        fused_ms = time_ms(lambda: group_norm_act(*args))
        inductor_ms = time_ms(lambda: compiled(*args))
        want = group_norm_act_reference(x.float(), *args[1:])
        err = ((group_norm_act(*args).float() - want).norm() / want.norm()).item()
    gbytes = 2 * x.numel() * x.element_size() / 1e9
    return {
        "shape": shape,
        "fused_ms": fused_ms,
        "inductor_ms": inductor_ms,
        "speedup": inductor_ms / fused_ms,
        "fused_gb_s": gbytes / fused_ms * 1e3,
        "inductor_gb_s": gbytes / inductor_ms * 1e3,
        "rel_err": err,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/fused_norm.py needs a CUDA GPU; none is visible")
    for name in ("recompile_limit", "cache_size_limit"):  # one compiled graph per shape
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    rows = []
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    head = ("tensor", "fused ms", "inductor ms", "speedup", "fused GB/s", "ind. GB/s")
    print(f"{head[0]:<28} {head[1]:>9} {head[2]:>12} {head[3]:>8} {head[4]:>11} {head[5]:>10}")
    for name, shape in SHAPES.items():
        r = {"name": name, **measure(shape)}
        rows.append(r)
        print(f"{name:<28} {r['fused_ms']:9.3f} {r['inductor_ms']:12.3f} {r['speedup']:8.2f} "
              f"{r['fused_gb_s']:11.0f} {r['inductor_gb_s']:10.0f}  err {r['rel_err']:.1e}")  # fmt: skip
    if args.out is not None:
        args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
