"""The two contracts of sampling: the denoiser every sampler calls (EDM's ``D(x; sigma)``, with one
checked call site) and the one signature every sampler has (k-diffusion's ``(model, x, sigmas, ...)``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, cast, runtime_checkable

import torch

from skiptune.errors import SkiptuneError


@runtime_checkable
class Denoiser(Protocol):
    """``D(x, sigma, class_labels=None) -> denoised``, as EDM's preconditioned networks.

    ``x`` is float32 ``[N, C, H, W]`` at noise level ``sigma`` (float32 ``[N]``); ``class_labels`` is
    one-hot float32 ``[N, label_dim]`` or ``None``. The result has the shape of ``x``. A denoiser may
    also have ``round_sigma(sigma) -> Tensor`` (EDM's networks do); samplers apply it where EDM does.
    """

    img_resolution: int
    img_channels: int
    label_dim: int
    sigma_min: float
    sigma_max: float

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor: ...


# What the public functions accept: a Denoiser, or any nn.Module that follows the contract at run time
# (mypy cannot see a Module's attributes as ints, so the Protocol alone would reject real networks).
DenoiserLike = Denoiser | torch.nn.Module
# The attributes the contract requires (wrappers such as the fast path copy them from the net).
CONTRACT_ATTRIBUTES = ("img_resolution", "img_channels", "label_dim", "sigma_min", "sigma_max")


def as_denoiser(net: DenoiserLike) -> Denoiser:
    """``net`` typed as a :class:`Denoiser`, after checking the contract's attributes exist."""
    missing = [a for a in CONTRACT_ATTRIBUTES if not hasattr(net, a)]
    if missing or not callable(net):
        raise SkiptuneError(
            f"{type(net).__name__} is not a denoiser: missing {', '.join(missing) or '__call__'}; expected "
            "D(x, sigma, class_labels) with img_resolution, img_channels, label_dim, sigma_min, sigma_max"
        )
    return cast(Denoiser, net)


def round_sigma(denoiser: object, sigma: float) -> float:
    """``denoiser.round_sigma(sigma)`` when the denoiser has one (EDM's VP/VE/iDDPM nets), else ``sigma``."""
    fn = getattr(denoiser, "round_sigma", None)
    if fn is None:
        return sigma
    return float(torch.as_tensor(fn(torch.tensor(sigma, dtype=torch.float64))))


def denoise(
    denoiser: DenoiserLike, x: torch.Tensor, sigma: float, class_labels: torch.Tensor | None
) -> torch.Tensor:
    """One network evaluation: float32 in (as the contract states), float64 out (samplers step in float64
    as EDM's do, so the solver adds no rounding of its own)."""
    sigmas = torch.full((x.shape[0],), sigma, dtype=torch.float32, device=x.device)
    out = denoiser(x.to(torch.float32), sigmas, class_labels)
    if out.shape != x.shape:
        raise SkiptuneError(
            f"denoiser returned shape {tuple(out.shape)} for input {tuple(x.shape)}; "
            "expected D(x, sigma, class_labels) to return an image batch shaped like x"
        )
    return out.to(torch.float64)


NoiseFn = Callable[[torch.Tensor], torch.Tensor]


class SamplerFn(Protocol):
    """``fn(denoiser, x, sigmas, *, class_labels=None, noise=None, settings=None) -> x0``, every sampler.

    ``x`` is the starting sample already at noise level ``sigmas[0]``, ``sigmas`` the float64 levels
    ending in 0 (see :mod:`skiptune.sampling.schedule`), ``noise(x)`` returns standard normal noise
    shaped like ``x`` (only stochastic samplers call it; default ``torch.randn_like``), ``settings``
    the sampler's registered settings type or ``None`` for its defaults. The result is float64.
    """

    def __call__(
        self,
        denoiser: DenoiserLike,
        x: torch.Tensor,
        sigmas: torch.Tensor,
        *,
        class_labels: torch.Tensor | None = None,
        noise: NoiseFn | None = None,
        settings: object | None = None,
    ) -> torch.Tensor: ...


class SamplerBody(Protocol):
    """What ``@register_sampler`` decorates: the same arguments, ``settings`` already checked (never None)."""

    def __call__(
        self,
        denoiser: DenoiserLike,
        x: torch.Tensor,
        sigmas: torch.Tensor,
        *,
        class_labels: torch.Tensor | None,
        noise: NoiseFn | None,
        settings: Any,
    ) -> torch.Tensor: ...
