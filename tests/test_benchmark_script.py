"""The throughput benchmark runs end to end on a tiny config on the CPU (CI never times anything)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "sampling_throughput.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sampling_throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_config_runs_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load()
    out = tmp_path / "result.json"
    modes = "gemm,edm-fp32,fp32,bf16-cl,skip-on,objective"  # skip-on needs the compiled mode: fails, recorded
    code = bench.main(
        ["--config", "tiny", "--device", "cpu", "--repeats", "1", "--modes", modes, "--gemm-size", "128",
         "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    rows = {r["mode"]: r for r in result["rows"]}
    assert list(rows) == modes.split(",")
    assert "error" in rows["edm-fp32"]  # no --edm-source: reported, not faked
    assert "error" in rows["skip-on"] and "error" in rows["objective"]
    assert rows["fp32"]["err"] == 0.0 and rows["fp32"]["img_s"] > 0
    assert 1e-5 < rows["bf16-cl"]["err"] < 5e-2 and math.isfinite(rows["bf16-cl"]["tflops"])
    assert result["flops_per_image_forward"] > 1e6
    assert rows["gemm"]["gemm_tflops"] > 0 and rows["gemm"]["img_s"] is None
    printed = capsys.readouterr().out
    assert "bf16-cl" in printed and "goal:" in printed
    gemm = rows["gemm"]["gemm_tflops"]  # each timed row's rate against 780 and against the card's own GEMM
    share = f"{100 * rows['fp32']['tflops'] / gemm:.1f}% of this card's GEMM ({gemm:.0f})"
    assert f"fp32: {rows['fp32']['tflops']:.1f} TFLOP/s = " in printed and share in printed


def test_compiled_modes_skip_tuning_and_objective(tmp_path: Path) -> None:
    bench = _load()
    out = tmp_path / "result.json"
    modes = "bf16-cl-compile,skip-on,objective"
    assert (
        bench.main(
            [
                "--config",
                "tiny",
                "--device",
                "cpu",
                "--repeats",
                "1",
                "--modes",
                modes,
                "--objective-batches",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = {r["mode"]: r for r in json.loads(out.read_text())["rows"]}
    assert all("error" not in r for r in rows.values()), rows
    assert rows["skip-on"]["graphs_compiled_warmup"] + rows["skip-on"]["graphs_compiled_timed"] == 0
    assert rows["objective"]["samples"] == 8 and math.isfinite(rows["objective"]["overhead_pct"])


def test_reference_loop_matches_our_heun() -> None:
    """The labelled stand-in for EDM's edm_sampler (used when generate.py cannot import) is EDM's Heun."""
    import torch

    from skiptune.nets.edm import EDMPrecond
    from skiptune.sampling import SAMPLERS, edm_sigmas

    bench = _load()
    torch.manual_seed(0)
    net = EDMPrecond(**bench.CONFIGS["tiny"]).eval()
    bench.randomize_(net, 1)
    latents = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = bench.reference_loop(net, latents, num_steps=3)
        ours = SAMPLERS.get("heun").fn(net, latents.double() * 80.0, edm_sigmas(net, 3, device="cpu"))
    # both pass sigma to the net as float32; only the float64 step arithmetic may round differently
    assert (ref - ours).abs().max() < 1e-4 * ours.abs().max() and not torch.equal(ref, latents.double() * 80)


ELEMENTWISE = "elementwise (Triton)"


@pytest.mark.parametrize(
    "kernel, kind",
    [  # names as torch.profiler reported them on the H100 (docs/performance/*.log)
        ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64", "conv"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x64", "attention"),
        ("triton_per_fused__safe_softmax_exp_prepare_softmax_online_sub_32", "attention"),
        ("triton_poi_fused__to_copy_clone_convolution_native_group_norm_silu", ELEMENTWISE),
        ("_tile_stats", "group norm (fused, ours)"),
        ("_apply", "group norm (fused, ours)"),
        ("nvjet_sm90_tst_192x192_64x4_2x1_v_bz_coopB_TNN", "gemm"),
        ("Memcpy DtoD (Device -> Device)", "other"),
    ],
)
def test_profile_kernel_kinds(kernel: str, kind: str) -> None:
    assert _load().kernel_kind(kernel) == kind
