"""Sampling throughput of skiptune's fast path against NVlabs/edm's own code, in one process, same weights.

    python benchmarks/sampling_throughput.py --edm-source .edm --config ddpmpp-cifar10 --nfe 35 --batch 512
    python benchmarks/sampling_throughput.py --edm-source .edm --config adm-imagenet64 --nfe 19 --batch 256
    python benchmarks/sampling_throughput.py --config tiny --device cpu       # the CI smoke run

Modes: ``edm-fp32`` / ``edm-fp16`` (EDM's EDMPrecond from --edm-source with our random weights loaded by
``load_state_dict``; EDM's ``generate.edm_sampler`` when its module imports, else our own *reference
loop* of EDM's Heun algorithm, labelled ``edm-*[ref-loop]``), and ours through ``skiptune.sampling``
(``sample_batch``: per-sample seeded noise, EDM schedule, Heun): ``fp32``, ``bf16-cl`` (bf16 +
channels_last), ``bf16-cl-compile``, ``bf16-cl-compile-graphs`` (CUDA graph trees), ``skip-on``
(the compiled path with Skip-Tuning rho = (0.8, 1.0); ``bf16-cl-compile`` has rho = (1, 1)).

Throughput: warm-up forwards (compilation, cuDNN autotuning), then the median of ``--repeats`` whole
sampling runs of one batch, timed with CUDA events. FLOPs: ``FlopCounterMode`` over one float32
forward of our network (EDM's counted too). ``err`` is each mode's denoiser rel. L2 error against our
float32 network on fresh random inputs. ``objective`` times feature extraction + statistics
(``FDObjective``) against sampling alone. EDM's code is read from --edm-source, never copied here.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(REPO))

from skiptune.nets.edm import EDMPrecond  # noqa: E402
from skiptune.nets.fast import FP32, FastDenoiser, FastPath, prepare_with  # noqa: E402
from skiptune.sampling import sample_batch  # noqa: E402
from skiptune.skips import SkipSchedule, skip_tuning  # noqa: E402

CONFIGS: dict[str, dict[str, Any]] = {
    # EDM's training configs (train.py --arch=adm / ddpmpp), without augmentation labels.
    "adm-imagenet64": dict(
        img_resolution=64,
        img_channels=3,
        label_dim=1000,
        model_type="DhariwalUNet",
        model_channels=192,
        channel_mult=[1, 2, 3, 4],
        num_blocks=3,
        attn_resolutions=[32, 16, 8],
        dropout=0.10,
    ),
    "ddpmpp-cifar10": dict(
        img_resolution=32,
        img_channels=3,
        label_dim=0,
        model_type="SongUNet",
        model_channels=128,
        channel_mult=[2, 2, 2],
        num_blocks=4,
        attn_resolutions=[16],
        dropout=0.13,
        embedding_type="positional",
        encoder_type="standard",
        decoder_type="standard",
        channel_mult_noise=1,
        resample_filter=[1, 1],
    ),
    "tiny": dict(
        img_resolution=8,
        img_channels=3,
        label_dim=0,
        model_type="SongUNet",
        model_channels=16,
        channel_mult=[1, 2],
        num_blocks=1,
        attn_resolutions=[4],
        dropout=0.0,
    ),
}
OURS: dict[str, FastPath] = {
    "fp32": FP32,
    "bf16-cl": FastPath(precision="bf16", channels_last=True, compile=False),
    "bf16-cl-compile": FastPath(precision="bf16", channels_last=True, compile=True),
    "bf16-cl-compile-graphs": FastPath(precision="bf16", channels_last=True, compile=True, cuda_graphs=True),
    "bf16-cl-compile-unfused": FastPath(precision="bf16", channels_last=True, compile=True, fused_norm=False),
}
ALL_MODES = ["gemm", "edm-fp32", "edm-fp16", *OURS, "skip-on", "objective"]
# Data-sheet dense bf16 tensor-core rates (TFLOP/s, without sparsity) by device-name fragment.
DATASHEET_TFLOPS = {"H100 80GB HBM3": 989.4, "H100 PCIe": 756.5, "H100 NVL": 835.5, "H200": 989.4}
TUNED = SkipSchedule(rho_bottom=0.8, rho_top=1.0)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(fn: Callable[[], object], repeats: int, device: torch.device) -> list[float]:
    """Seconds per call of ``fn``: CUDA events on a GPU, a host clock after synchronising elsewhere."""
    out = []
    for _ in range(repeats):
        sync(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return out


def random_inputs(net: Any, n: int, device: torch.device, seed: int) -> tuple[torch.Tensor, ...]:
    """Fresh denoiser inputs: sigma from EDM's training distribution, x at that noise level, labels.

    Made as inference tensors, like the sampler's: compiled graphs are guarded on that property."""
    with torch.inference_mode():
        return _random_inputs(net, n, device, seed)


def _random_inputs(net: Any, n: int, device: torch.device, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    res, ch, label_dim = int(net.img_resolution), int(net.img_channels), int(net.label_dim)
    sigma = torch.exp(torch.randn(n, generator=gen) * 1.2 - 1.2)
    x = torch.randn(n, ch, res, res, generator=gen) * (sigma.reshape(-1, 1, 1, 1) ** 2 + 0.25).sqrt()
    labels = torch.zeros(n, max(label_dim, 1))
    labels[torch.arange(n), torch.randint(max(label_dim, 1), (n,), generator=gen)] = 1
    return x.to(device), sigma.to(device), (labels.to(device) if label_dim else None)  # type: ignore[return-value]


def randomize_(net: torch.nn.Module, seed: int) -> None:
    """Non-degenerate random weights everywhere: EDM's init zeroes every block's last convolution (and
    ADM's output layer), which would make the net's output trivial and time matrix units on zeros."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim >= 2:
                p.copy_(noise / p[0].numel() ** 0.5)  # unit-variance outputs
            else:
                gain = "norm" in name and name.endswith("weight")  # group-norm gains around 1
                p.copy_(1 + 0.2 * noise if gain else 0.1 * noise)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def count_flops(net: Any, device: torch.device) -> float:
    """FLOPs of one float32 forward per image (FlopCounterMode, batch of 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    x, sigma, labels = random_inputs(net, 2, device, seed=99)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, sigma, labels)
    return counter.get_total_flops() / 2


# ------------------------------------------------------------------------------------------- EDM's code


def load_edm(source: Path | None) -> tuple[type | None, Callable[..., torch.Tensor] | None, str]:
    """EDM's ``EDMPrecond`` and ``edm_sampler`` from a local snapshot; a note on what was found."""
    if source is None:
        return None, None, "no --edm-source given"
    if not (source / "training" / "networks.py").is_file():
        return None, None, f"{source} holds no training/networks.py"
    sys.path.insert(0, str(source.resolve()))
    try:
        networks = importlib.import_module("training.networks")
    except Exception as exc:  # its imports (dnnlib, numpy...) missing here
        return None, None, f"EDM's training.networks does not import: {exc!r}"
    try:
        sampler = importlib.import_module("generate").edm_sampler
        return networks.EDMPrecond, sampler, "EDM's generate.edm_sampler"
    except Exception as exc:  # generate.py needs click, tqdm, PIL, dnnlib
        return networks.EDMPrecond, None, f"generate.py does not import ({exc!r}): reference loop"


def reference_loop(
    net: Any,
    latents: torch.Tensor,
    class_labels: torch.Tensor | None = None,
    num_steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
) -> torch.Tensor:
    """Reference loop (ours): EDM's deterministic Heun (Karras et al. 2022, Alg. 1), float64 state as EDM."""
    s_lo, s_hi = max(sigma_min, net.sigma_min), min(sigma_max, net.sigma_max)
    i = torch.arange(num_steps, dtype=torch.float64, device=latents.device) / (num_steps - 1)
    levels = (s_hi ** (1 / rho) + i * (s_lo ** (1 / rho) - s_hi ** (1 / rho))) ** rho
    t = torch.cat([net.round_sigma(levels), levels.new_zeros(1)])
    x = latents.to(torch.float64) * t[0]
    for k in range(num_steps):
        d = (x - net(x, t[k], class_labels).to(torch.float64)) / t[k]
        x_next = x + (t[k + 1] - t[k]) * d
        if k < num_steps - 1:
            d2 = (x_next - net(x_next, t[k + 1], class_labels).to(torch.float64)) / t[k + 1]
            x_next = x + (t[k + 1] - t[k]) * (0.5 * d + 0.5 * d2)
        x = x_next
    return x


# ------------------------------------------------------------------------------------------- the runs


class Bench:
    """One config on one device: builds both nets with the same weights, runs modes, keeps the rows."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args, self.device = args, device
        self.cfg = CONFIGS[args.config]
        if args.nfe % 2 == 0 or args.nfe < 3:
            raise SystemExit(f"--nfe {args.nfe}: Heun spends 2*steps-1 evaluations; give an odd NFE >= 3")
        self.steps = (args.nfe + 1) // 2
        torch.manual_seed(args.seed)
        self.net = EDMPrecond(**self.cfg).eval().requires_grad_(False)
        randomize_(self.net, args.seed)
        self.net.to(device)
        self.params = sum(p.numel() for p in self.net.parameters())
        self.edm_cls, self.edm_sampler, edm_note = load_edm(args.edm_source)
        self.edm_note = edm_note
        self.err_inputs = random_inputs(self.net, args.err_batch, device, seed=args.seed + 1)
        with torch.inference_mode():
            self.err_ref = self.net(*self.err_inputs)
        sigma = self.err_inputs[1].reshape(-1, 1, 1, 1)
        self.c_skip = 0.25 / (sigma**2 + 0.25)  # EDM's c_skip, c_out (sigma_data = 0.5)
        self.c_out = sigma * 0.5 / (sigma**2 + 0.25).sqrt()
        self.flops = count_flops(self.net, device)
        self.rows: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {}
        self.compiled: FastDenoiser | None = None

    # -- EDM
    def errors(self, out: torch.Tensor) -> tuple[float, float]:
        """Rel. L2 error of D(x) and of the raw network output F = (D - c_skip x) / c_out."""
        x = self.err_inputs[0]
        f_out, f_ref = ((d - self.c_skip * x) / self.c_out for d in (out, self.err_ref))
        return rel_err(out, self.err_ref), rel_err(f_out, f_ref)

    def edm_net(self) -> Any:
        if self.edm_cls is None:
            raise RuntimeError(self.edm_note)
        if not hasattr(self, "_edm"):
            edm = self.edm_cls(**self.cfg)
            edm.load_state_dict(self.net.state_dict(), strict=True)  # same keys: the same weights
            self._edm = edm.to(self.device).eval().requires_grad_(False)
            self.extra["edm_flops_per_image"] = count_flops(self._edm, self.device)
        return self._edm

    def run_edm(self, fp16: bool) -> dict[str, Any]:
        net = self.edm_net()
        net.use_fp16 = fp16
        n, res, ch, label_dim = self.args.batch, net.img_resolution, net.img_channels, net.label_dim
        sampler = self.edm_sampler or reference_loop
        gen = torch.Generator(self.device).manual_seed(self.args.seed)

        def run() -> torch.Tensor:
            latents = torch.randn([n, ch, res, res], device=self.device, generator=gen)
            labels = None
            if label_dim:
                idx = torch.randint(label_dim, (n,), device=self.device, generator=gen)
                labels = torch.eye(label_dim, device=self.device)[idx]
            with torch.no_grad():
                return sampler(net, latents, labels, num_steps=self.steps)

        with torch.no_grad():
            err = self.errors(net(*self.err_inputs))
        note = "EDM generate.edm_sampler" if self.edm_sampler else "reference loop (ours) of EDM's Heun"
        batch = random_inputs(self.net, n, self.device, seed=self.args.seed + 2)

        def warm() -> None:  # cuDNN autotuning at the sampling batch size
            with torch.no_grad():
                for _ in range(2):
                    net(*batch)

        return self.measure(run, warm=warm, err=err, note=note)

    # -- ours
    def run_ours(self, settings: FastPath, *, schedule: SkipSchedule | None = None) -> dict[str, Any]:
        fast = prepare_with(self.net, settings)
        if settings.compile and not settings.cuda_graphs:
            self.compiled = fast
        return self.run_fast(fast, schedule=schedule, note=_describe(settings))

    def run_fast(self, fast: FastDenoiser, *, schedule: SkipSchedule | None, note: str) -> dict[str, Any]:
        seeds = range(self.args.batch)

        def run() -> torch.Tensor:
            return sample_batch(fast, sampler="heun", nfe=self.args.nfe, seeds=seeds, device=self.device)

        def warm() -> None:
            batch = random_inputs(self.net, self.args.batch, self.device, seed=self.args.seed + 2)
            with torch.inference_mode():
                for _ in range(3 if fast.settings.cuda_graphs else 2):
                    fast(*batch)

        with skip_tuning(fast, schedule or SkipSchedule()):
            row = self.measure(run, warm=warm, err=None, note=note)
            if schedule is None:  # after warm-up: the error batch is padded into the compiled graph
                with torch.inference_mode():
                    row["err"], row["err_F"] = self.errors(fast(*self.err_inputs))
            return row

    def measure(
        self,
        run: Callable[[], object],
        *,
        warm: Callable[[], object],
        err: tuple[float, float] | None,
        note: str,
    ) -> dict[str, Any]:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        g0 = _unique_graphs()
        warm()
        sync(self.device)
        warm_graphs = _unique_graphs() - g0
        warm_s = time.perf_counter() - t0
        times = time_runs(run, self.args.repeats, self.device)
        timed_graphs = _unique_graphs() - g0 - warm_graphs
        sec = statistics.median(times)
        img_s = self.args.batch / sec
        tflops = img_s * self.flops * self.args.nfe / 1e12
        peak_mem = (
            torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None
        )
        return {
            "img_s": img_s,
            "tflops": tflops,
            "pct_peak": 100 * tflops / self.args.peak_tflops,
            "err": err[0] if err else None,
            "err_F": err[1] if err else None,
            "times_s": times,
            "warmup_s": warm_s,
            "peak_mem_gib": peak_mem,
            "note": note,
            "graphs_compiled_warmup": warm_graphs,
            "graphs_compiled_timed": timed_graphs,
        }

    # -- the objective
    def run_objective(self) -> dict[str, Any]:
        if self.compiled is None:
            raise RuntimeError("needs the bf16-cl-compile mode first (it reuses that compiled net)")
        return objective_overhead(self, self.compiled)


def _unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _describe(s: FastPath) -> str:
    parts = [s.precision] + [
        name
        for name, on in (
            ("channels_last", s.channels_last),
            ("compile", s.compile),
            ("cuda graphs", s.cuda_graphs),
            ("fused group norm", s.fused_norm and s.precision != "fp32"),
        )
        if on
    ]
    return "ours: " + " + ".join(parts)


def standin_extractor(config: str, device: torch.device) -> Any:
    """A feature extractor with the real one's cost: torchvision's InceptionV3 architecture (2048-d pool
    features of 299x299 inputs, as FID's) with random weights, since no weights are fetched here; the
    tiny config gets a small conv net."""
    from skiptune.objectives.features import ModuleExtractor

    if config == "tiny":
        module: torch.nn.Module = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.SiLU(),
            torch.nn.AdaptiveAvgPool2d(2),
            torch.nn.Flatten(),
        )
        dim, name = 32, "standin-tiny-conv"
    else:
        import torchvision

        net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
        net.fc = torch.nn.Identity()
        module = torch.nn.Sequential(_Resize299(), net)
        dim, name = 2048, "standin-inception-v3-random-weights"
    module = module.to(device).eval()
    return ModuleExtractor(
        module, name=name, feature_dim=dim, input_channels=3, device=device, input_format="float11"
    )


class _Resize299(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)


def objective_overhead(bench: Bench, fast: FastDenoiser) -> dict[str, Any]:
    """Features + float64 statistics (FDObjective, extraction on a side stream) against sampling alone."""
    import numpy as np

    from skiptune.objectives.fid import FDObjective
    from skiptune.objectives.frechet import frechet_distance
    from skiptune.objectives.reference import ReferenceStats
    from skiptune.objectives.spec import ObjectiveSpec
    from skiptune.sampling import generate_images

    args, dev = bench.args, bench.device
    extractor = standin_extractor(args.config, dev)
    rng = np.random.default_rng(args.seed)
    a = rng.standard_normal((extractor.feature_dim, extractor.feature_dim))
    reference = ReferenceStats(mu=rng.standard_normal(extractor.feature_dim), sigma=a @ a.T / a.shape[0])
    n = args.batch * args.objective_batches
    extractor(
        torch.randint(
            0,
            256,
            (args.batch, 3, bench.net.img_resolution, bench.net.img_resolution),
            dtype=torch.uint8,
            device=dev,
        )
    )  # warm-up: cuDNN autotuning

    def sample_only() -> None:
        for _ in generate_images(
            fast, sampler="heun", nfe=args.nfe, seeds=range(n), batch_size=args.batch, device=dev
        ):
            pass

    objective = FDObjective(
        spec=ObjectiveSpec.describe(extractor, reference, reference_name="random", n_samples=n),
        denoiser=fast,
        sampler="heun",
        nfe=args.nfe,
        extractor=extractor,
        reference=reference,
        batch_size=args.batch,
        device=dev,
        progress=False,
    )
    with skip_tuning(fast, TUNED):
        t_sample = statistics.median(time_runs(sample_only, 1, dev))
    t_objective = statistics.median(time_runs(lambda: list(objective.evaluate(TUNED)), 1, dev))
    mu, sigma = reference.mu, reference.sigma
    t0 = time.perf_counter()
    frechet_distance(mu + 0.01, sigma, mu, sigma)
    t_distance = time.perf_counter() - t0
    overhead = (t_objective - t_distance) / t_sample - 1
    return {
        "img_s": n / t_objective,
        "tflops": None,
        "pct_peak": None,
        "err": None,
        "sample_only_s": t_sample,
        "objective_s": t_objective,
        "distance_s": t_distance,
        "overhead_pct": 100 * overhead,
        "extractor": extractor.name,
        "samples": n,
        "note": f"features+stats add {100 * overhead:.1f}% (+{t_distance:.2f}s per distance)",
    }


def profile_forward(bench: Bench, top: int = 25) -> dict[str, Any]:
    """CUDA time per kernel over two forwards of the compiled bf16 path at the sampling batch size."""
    from torch.profiler import ProfilerActivity, profile

    if bench.compiled is None:
        raise RuntimeError("needs the bf16-cl-compile mode first (it profiles that compiled net)")
    if bench.device.type != "cuda":
        raise RuntimeError(f"profile times CUDA kernels; device is {bench.device}")
    batch = random_inputs(bench.net, bench.args.batch, bench.device, seed=bench.args.seed + 3)
    with torch.inference_mode():
        bench.compiled(*batch)
        sync(bench.device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(2):
                bench.compiled(*batch)
            sync(bench.device)
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    events.sort(key=lambda e: -e.device_time_total)
    total = sum(e.self_device_time_total for e in events) / 2e3  # ms per forward
    rows = [
        {"kernel": e.key[:90], "ms_per_forward": e.self_device_time_total / 2e3, "calls": e.count // 2}
        for e in sorted(events, key=lambda e: -e.self_device_time_total)[:top]
    ]
    for r in rows:
        print(f"  {r['ms_per_forward']:8.2f} ms  {r['calls']:4d}x  {r['kernel']}")
    flop_ms = bench.flops * bench.args.batch / (bench.args.peak_tflops * 1e9)
    kinds: dict[str, float] = {}
    for e in events:
        kind = kernel_kind(e.key)
        kinds[kind] = kinds.get(kind, 0.0) + e.self_device_time_total / 2e3
    by_kind = sorted(kinds.items(), key=lambda kv: -kv[1])
    print("  by kind: " + ", ".join(f"{k} {v:.1f} ms" for k, v in by_kind))
    return {
        "img_s": None,
        "tflops": None,
        "pct_peak": None,
        "err": None,
        "kernel_ms_per_forward": total,
        "matmul_floor_ms": flop_ms,
        "top_kernels": rows,
        "ms_by_kind": kinds,
        "note": f"{total:.1f} ms of kernels per forward; {flop_ms:.1f} ms at the peak rate",
    }


# Our fused group norm's Triton kernels (skiptune.nets.fused_norm_kernels), matched by exact name.
FUSED_NORM_KERNELS = frozenset({"_tile_stats", "_fold", "_apply"})
KERNEL_KINDS = (  # (kind, name fragments): first match wins
    ("attention", ("flash", "fmha", "attention", "softmax", "sdpa")),
    ("elementwise (Triton)", ("triton",)),
    ("conv", ("fprop", "dgrad", "conv", "implicit_gemm")),
    ("gemm", ("gemm", "nvjet", "cutlass")),
)


def kernel_kind(name: str) -> str:
    if name in FUSED_NORM_KERNELS:
        return "group norm (fused, ours)"
    low = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in low for k in keys)), "other")


def gemm_rate(device: torch.device, size: int, repeats: int) -> dict[str, Any]:
    """The card's own dense bf16 matmul rate: a ``size``-cube GEMM, the median of ``repeats`` timed runs
    of 10 calls each, after a warm-up (what "peak" means on this card, next to the 780 TFLOP/s figure)."""
    gen = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(size, size, device=device, generator=gen).to(torch.bfloat16) for _ in range(2))
    out = torch.empty(size, size, device=device, dtype=torch.bfloat16)

    def run() -> None:
        for _ in range(10):
            torch.matmul(a, b, out=out)

    run()
    seconds = statistics.median(time_runs(run, repeats, device)) / 10
    tflops = 2 * size**3 / seconds / 1e12
    return {"img_s": None, "gemm_tflops": tflops, "note": f"bf16 GEMM {size}^3: {tflops:.1f} TFLOP/s"}


def run_mode(bench: Bench, mode: str) -> dict[str, Any]:
    if mode == "gemm":
        return gemm_rate(bench.device, bench.args.gemm_size, max(bench.args.repeats, 3))
    if mode == "edm-fp32":
        return bench.run_edm(fp16=False)
    if mode == "edm-fp16":
        return bench.run_edm(fp16=True)
    if mode in OURS:
        return bench.run_ours(OURS[mode])
    if mode == "skip-on":
        if bench.compiled is None:
            raise RuntimeError("needs the bf16-cl-compile mode first (it reuses that compiled net)")
        return bench.run_fast(bench.compiled, schedule=TUNED, note="ours: bf16-cl-compile, rho=(0.8, 1.0)")
    if mode == "objective":
        return bench.run_objective()
    if mode == "bf16-cl-compile-autocast":  # experiment: autocast instead of the native bf16 backbone
        fast = prepare_with(bench.net, OURS["bf16-cl-compile"])
        fast._native = False
        return bench.run_fast(fast, schedule=None, note="ours: autocast bf16 + channels_last + compile")
    if mode == "profile":
        return profile_forward(bench)
    raise SystemExit(f"unknown mode {mode!r}; expected some of {', '.join(ALL_MODES)}")


def ratios(rows: list[dict[str, Any]]) -> None:
    base = {r["mode"]: r["img_s"] for r in rows if r["mode"].startswith("edm-") and "img_s" in r}
    for r in rows:
        for ref in ("edm-fp32", "edm-fp16"):
            if ref in base and r.get("tflops") is not None:
                r[f"x_{ref}"] = r["img_s"] / base[ref]


def table(result: dict[str, Any]) -> str:
    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    head = (
        f"{'mode':<24} {'img/s':>8} {'TFLOP/s':>8} {'% peak':>7} {'x fp32':>7} {'x fp16':>7} "
        f"{'err D':>8} {'err F':>8}  note"
    )
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"{r['mode']:<24} failed: {r['error']}")
            continue
        if r.get("img_s") is None:
            lines.append(f"{r['mode']:<24} {r['note']}")
            continue
        lines.append(
            f"{r['mode']:<24} {f(r['img_s'], '8.1f')} {f(r['tflops'], '8.1f')} {f(r['pct_peak'], '7.1f')} "
            f"{f(r.get('x_edm-fp32'), '7.2f')} {f(r.get('x_edm-fp16'), '7.2f')} "
            f"{f(r['err'], '8.1e')} {f(r.get('err_F'), '8.1e')}  {r['note']}"
        )
    return "\n".join(lines)


def summary(result: dict[str, Any]) -> str:
    rows = {r["mode"]: r for r in result["rows"] if "error" not in r}
    out = [f"goal: {result['goal_img_s']:.1f} img/s (50% of {result['peak_tflops']:g} TFLOP/s)"]
    gemm, sheet = rows.get("gemm", {}).get("gemm_tflops"), result.get("datasheet_tflops")
    for r in rows.values():  # what "peak" means: the 780 figure, this card's own GEMM, the data sheet
        if r.get("tflops") is None:
            continue
        parts = [f"{100 * r['tflops'] / result['peak_tflops']:.1f}% of {result['peak_tflops']:g}"]
        if gemm:
            parts.append(f"{100 * r['tflops'] / gemm:.1f}% of this card's GEMM ({gemm:.0f})")
        if sheet:
            parts.append(f"{100 * r['tflops'] / sheet:.1f}% of the data sheet's {sheet:g}")
        out.append(f"{r['mode']}: {r['tflops']:.1f} TFLOP/s = " + ", ".join(parts))
    if "skip-on" in rows and "bf16-cl-compile" in rows:
        diff = rows["skip-on"]["img_s"] / rows["bf16-cl-compile"]["img_s"] - 1
        out.append(
            f"skip tuning on vs off: {100 * diff:+.2f}% img/s, graphs compiled while timed: "
            f"{rows['skip-on']['graphs_compiled_warmup'] + rows['skip-on']['graphs_compiled_timed']}"
        )
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    p.add_argument("--edm-source", type=Path, default=None, help="local NVlabs/edm snapshot (never copied)")
    p.add_argument("--nfe", type=int, default=None, help="default: 19 (ADM), 35 (DDPM++), 3 (tiny)")
    p.add_argument("--batch", type=int, default=None, help="default: 256 (ADM), 512 (DDPM++), 4 (tiny)")
    p.add_argument("--modes", default=",".join(ALL_MODES), help=f"comma list of {', '.join(ALL_MODES)}")
    p.add_argument("--repeats", type=int, default=3, help="timed sampling runs per mode (median)")
    p.add_argument("--err-batch", type=int, default=16, help="inputs for the denoiser error check")
    p.add_argument("--objective-batches", type=int, default=2, help="batches in the objective run")
    p.add_argument("--peak-tflops", type=float, default=780.0, help="bf16 dense matmul rate of the card")
    p.add_argument("--gemm-size", type=int, default=8192, help="the gemm mode's matrix size")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON results, rewritten after every mode")
    args = p.parse_args(argv)
    defaults = {"adm-imagenet64": (19, 256), "ddpmpp-cifar10": (35, 512), "tiny": (3, 4)}[args.config]
    args.nfe = args.nfe or defaults[0]
    args.batch = args.batch or defaults[1]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True  # for every mode, EDM's too: convolution autotuning
    log(f"building {args.config} on {device}")
    bench = Bench(args, device)
    result: dict[str, Any] = {
        "config": args.config,
        "nfe": args.nfe,
        "batch": args.batch,
        "params": bench.params,
        "flops_per_image_forward": bench.flops,
        "peak_tflops": args.peak_tflops,
        "goal_img_s": 0.5 * args.peak_tflops * 1e12 / (bench.flops * args.nfe),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "datasheet_tflops": None,
        "torch": torch.__version__,
        "edm": bench.edm_note,
        "command": " ".join(sys.argv),
        "rows": [],
    }
    sheet = [v for k, v in DATASHEET_TFLOPS.items() if k in result["device"]]
    result["datasheet_tflops"] = sheet[0] if sheet else None
    log(f"{bench.params / 1e6:.1f}M params, {bench.flops / 1e9:.2f} GFLOP/img/forward, EDM: {bench.edm_note}")
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        log(f"mode {mode} ...")
        try:
            row = {"mode": mode, **run_mode(bench, mode)}
        except (RuntimeError, ImportError, torch.cuda.OutOfMemoryError) as exc:  # keep the other modes
            row = {"mode": mode, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        result["rows"].append(row)
        log(f"mode {mode}: " + (row.get("error") or f"{row.get('img_s') or 0:.1f} img/s  {row['note']}"))
        ratios(result["rows"])
        result.update(bench.extra)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2, default=str))
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()
    print(
        f"\n{result['device']}, torch {result['torch']}, {args.config}, NFE {args.nfe}, batch {args.batch}, "
        f"{bench.flops / 1e9:.2f} GFLOP/img/forward, EDM: {bench.edm_note}"
    )
    print(table(result))
    print(summary(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
