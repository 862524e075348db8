"""The fast sampling path: a denoiser wrapper that runs the network in bf16/fp16, channels_last, compiled.

    fast = prepare_denoiser(net)                       # bf16 + channels_last + torch.compile
    with skip_tuning(fast, SkipSchedule(0.8, 1.0)):    # the wrapper exposes the net's skip buffers
        images = next(generate_images(fast, sampler="heun", nfe=19, seeds=range(256), ...))

The wrapper keeps the denoiser contract ``D(x, sigma, class_labels=None)`` with float32 in and float32
out, so every sampler works unchanged. What makes it fast (see docs/performance.md for measurements):

- Networks on ``skiptune.nets.base`` (EDM, VP/VE, EDM2) run their backbone natively in the dtypes they
  list in ``native_dtypes`` (bf16/fp16): EDM's own ``use_fp16`` mechanism (every layer casts its
  weights to the input's dtype) with bf16 allowed; the tiny embedding MLP and the preconditioning
  stay float32. Other denoisers (the diffusers wrapper, user networks) run under autocast.
- channels_last activations and 4-D weights (the layout cuDNN's and Inductor's convolutions prefer).
- Group norm + bias + embedding modulation + SiLU as one custom op of Triton kernels
  (``skiptune.nets.fused_norm``); ``torch.compile`` fuses the remaining elementwise work and casts;
  attention goes through SDPA (flash).
- Skip coefficients stay buffers read inside forward: Skip-Tuning writes them with ``copy_`` and the
  compiled graph is reused, never rebuilt (no recompilation when rho changes).
- A smaller batch (the last one of a run) is padded to the largest batch seen, so it reuses the
  compiled graph instead of compiling a new one; each sample's result depends on its own row only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

import torch

from skiptune.errors import SkiptuneError
from skiptune.nets.base import supports_sigma_window
from skiptune.nets.layers import GroupNorm
from skiptune.sampling.contract import CONTRACT_ATTRIBUTES, as_denoiser

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Also passed on: a latent model's decoding and image size, a text model's encoder, the folder identity.
_OPTIONAL = ("sigma_data", "use_fp16", "decode", "image_resolution", "image_channels", "encode_text",
             "extra_identity")


@dataclass(frozen=True)
class FastPath:
    """How to run the denoiser: precision, memory layout, compilation, CUDA graphs, batch padding.

    ``cuda_graphs`` compiles with ``mode="reduce-overhead"`` (Inductor's CUDA graph trees); it only
    helps when kernel launches dominate (small batches), see docs/performance.md. ``fused_norm``: the
    blocks' group norm + modulation + SiLU run as Triton kernels (``skiptune.nets.fused_norm``) on
    CUDA bf16/fp16; False leaves them to torch.compile.
    """

    precision: Precision = "bf16"
    channels_last: bool = True
    compile: bool = True
    cuda_graphs: bool = False
    pad_batches: bool = True
    fused_norm: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise SkiptuneError(
                f"precision {self.precision!r} is not supported; expected one of {', '.join(PRECISIONS)}"
            )
        if self.cuda_graphs and not self.compile:
            raise SkiptuneError("cuda_graphs=True needs compile=True (graphs are captured by torch.compile)")

    @property
    def is_plain(self) -> bool:
        """True for the untouched float32 network (the wrapper then only forwards the call)."""
        return self.precision == "fp32" and not (self.channels_last or self.compile)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FP32 = FastPath(precision="fp32", channels_last=False, compile=False, cuda_graphs=False)


def default_fast_path(device: torch.device | str) -> FastPath:
    """bf16 + channels_last + compile on CUDA; the plain float32 network elsewhere (CPU, MPS)."""
    return FastPath() if torch.device(device).type == "cuda" else FP32


class FastDenoiser(torch.nn.Module):
    """A denoiser run by a :class:`FastPath`; ``.net`` is the wrapped network (parameters shared).

    ``model``, ``skip_window`` and ``supports_sigma_window`` are the wrapped network's, so
    ``skiptune.skips`` finds the skip buffers through the wrapper exactly as through the net itself.
    """

    def __init__(self, net: torch.nn.Module, settings: FastPath, *, backend: Any = "inductor") -> None:
        super().__init__()
        as_denoiser(net)
        self.net = net
        self.settings = settings
        for name in CONTRACT_ATTRIBUTES + _OPTIONAL:
            if hasattr(net, name):
                setattr(self, name, getattr(net, name))
        self.dtype = PRECISIONS[settings.precision]
        # The network says which dtypes its backbone runs in natively (forward's backbone_dtype).
        self._native = self.dtype != torch.float32 and self.dtype in getattr(net, "native_dtypes", ())
        self._max_batch = 0
        self._run: Any = self._forward_impl
        if settings.compile:
            mode = "reduce-overhead" if settings.cuda_graphs else "default"
            options: dict[str, Any] = {"mode": mode} if backend == "inductor" else {}
            self._run = _no_aliasing_check(
                torch.compile(self._forward_impl, backend=backend, dynamic=False, **options)
            )

    @property
    def model(self) -> torch.nn.Module:
        model = getattr(self.net, "model", None)
        if not isinstance(model, torch.nn.Module):
            raise AttributeError(f"{type(self.net).__name__} has no backbone attribute 'model'")
        return model

    @property
    def skip_window(self) -> torch.Tensor:
        window = getattr(self.net, "skip_window", None)
        if not isinstance(window, torch.Tensor):
            raise AttributeError(f"{type(self.net).__name__} has no skip_window buffer")
        return window

    @property
    def supports_sigma_window(self) -> bool:
        return supports_sigma_window(self.net)

    def round_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        fn = getattr(self.net, "round_sigma", None)
        return torch.as_tensor(sigma) if fn is None else fn(sigma)

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.settings.is_plain:
            return cast(torch.Tensor, self.net(x, sigma, class_labels))
        n = x.shape[0]
        sig = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).reshape(-1).expand(n)
        labels = class_labels
        if torch.is_inference_mode_enabled():
            # Compiled graphs are guarded on whether each input is an inference tensor; the sampler's
            # labels are made outside inference mode and its x inside, so make all three alike.
            x, sig, labels = _as_inference(x), _as_inference(sig), _as_inference(labels)
        if self.settings.pad_batches and self.settings.compile and 0 < n < self._max_batch:
            x, sig, labels = _pad_batch(self._max_batch, x, sig, labels)
        self._max_batch = max(self._max_batch, n)
        out = self._run(x, sig, labels)
        # CUDA graph outputs live in memory the next replay overwrites: hand out a copy.
        return out[:n].clone() if self.settings.cuda_graphs or out.shape[0] != n else out

    def _forward_impl(
        self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None
    ) -> torch.Tensor:
        x = x.to(torch.float32)
        if self.settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self._native:
            out = self.net(x, sigma, class_labels, backbone_dtype=self.dtype)
        elif self.dtype != torch.float32:
            with torch.autocast(x.device.type, dtype=self.dtype):
                out = self.net(x, sigma, class_labels)
        else:
            out = self.net(x, sigma, class_labels)
        return out.to(torch.float32).contiguous()


def _no_aliasing_check(fn: Any) -> Any:
    """``fn`` with AOTAutograd's first-call check of custom-op aliasing off.

    That check runs the first call of a graph holding a custom op (``skiptune::group_norm_act``, whose
    output never aliases an input) under a Python dispatch mode, and Inductor tunes its kernels during
    that call: with the op's first version the call did not finish in 100 s on an H100 (see
    docs/performance.md)."""
    config = torch._functorch.config
    if not hasattr(config, "check_custom_op_aliasing"):
        return fn

    def run(*args: Any) -> Any:
        with config.patch(check_custom_op_aliasing=False):
            return fn(*args)

    return run


def _as_inference(t: torch.Tensor | None) -> Any:
    return t.clone() if t is not None and not t.is_inference() else t


def _pad_batch(
    size: int, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Repeat the last row up to ``size`` rows: real inputs (never zeros) keep the padding finite."""

    def pad(t: torch.Tensor) -> torch.Tensor:
        if t.shape[0] == 1:  # broadcast labels (EDM's all-zero "no label") stay broadcast
            return t
        return torch.cat([t, t[-1:].expand(size - t.shape[0], *t.shape[1:])])

    return pad(x), pad(sigma), None if labels is None else pad(labels)


def prepare_denoiser(
    net: torch.nn.Module,
    *,
    precision: Precision = "bf16",
    channels_last: bool = True,
    compile: bool = True,
    cuda_graphs: bool = False,
    pad_batches: bool = True,
    fused_norm: bool = True,
    backend: Any = "inductor",
) -> FastDenoiser:
    """``net`` wrapped for fast sampling; same contract ``D(x, sigma, class_labels=None)`` -> float32.

    The network is put in eval mode, and with ``channels_last`` its 4-D weights are stored
    channels_last (values unchanged). Parameters and buffers are shared, not copied. ``backend`` is
    ``torch.compile``'s (tests pass a counting backend).
    """
    settings = FastPath(precision, channels_last, compile, cuda_graphs, pad_batches, fused_norm)
    return prepare_with(net, settings, backend=backend)


def prepare_with(net: torch.nn.Module, settings: FastPath, *, backend: Any = "inductor") -> FastDenoiser:
    """``prepare_denoiser`` from a :class:`FastPath` (e.g. ``default_fast_path(device)``)."""
    net.eval()
    if settings.channels_last:
        net.to(memory_format=torch.channels_last)
    for module in net.modules():
        if isinstance(module, GroupNorm):
            module.fused = settings.fused_norm
    return FastDenoiser(net, settings, backend=backend)


__all__ = ["FP32", "PRECISIONS", "FastDenoiser", "FastPath", "Precision", "default_fast_path",
           "prepare_denoiser", "prepare_with"]  # fmt: skip
