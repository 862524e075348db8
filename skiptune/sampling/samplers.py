"""Samplers sharing one signature (k-diffusion style), registered by name with their NFE mapping.

``fn(denoiser, x, sigmas, *, class_labels=None, noise=None, settings=None) -> x0``: ``x`` is the
starting sample already at noise level ``sigmas[0]``, ``sigmas`` the float64 levels ending in 0 (see
:mod:`skiptune.sampling.schedule`), ``noise(x)`` returns standard normal noise shaped like ``x`` (only
stochastic samplers call it; default ``torch.randn_like``). The state is stepped in float64, as in
EDM's ``generate.py``; the result is float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, TypeVar

import torch

from skiptune.errors import SkiptuneError
from skiptune.sampling.contract import DenoiserLike, denoise, round_sigma
from skiptune.sampling.settings import ChurnSettings, DPMSolverSettings, EulerSettings, HeunSettings

NoiseFn = Callable[[torch.Tensor], torch.Tensor]
S = TypeVar("S")


class SamplerFn(Protocol):
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


def check_settings(settings: object | None, kind: type[S], sampler: str) -> S:
    """``settings`` when it is a ``kind``, the defaults for ``None``; anything else is a user error."""
    if settings is None:
        return kind()
    if not isinstance(settings, kind):
        raise SkiptuneError(
            f"sampler {sampler!r} takes {kind.__name__}, got {type(settings).__name__}; "
            f"pass {kind.__name__}(...) or None for the defaults"
        )
    return settings


def _churn(
    denoiser: DenoiserLike, x: torch.Tensor, t_cur: float, steps: int, s: ChurnSettings, noise: NoiseFn | None
) -> tuple[torch.Tensor, float]:
    """EDM's temporary noise increase: ``(x_hat, t_hat)`` with ``t_hat = t_cur (1 + gamma)``."""
    if not s.stochastic:
        return x, t_cur
    # Drawn on every step, as EDM does, so the noise stream of a sample does not depend on S_min/S_max.
    eps = (noise or torch.randn_like)(x)
    if not s.s_min <= t_cur <= s.s_max:
        return x, t_cur
    gamma = min(s.s_churn / steps, math.sqrt(2) - 1)
    t_hat = round_sigma(denoiser, t_cur + gamma * t_cur)
    return x + math.sqrt(max(t_hat**2 - t_cur**2, 0.0)) * s.s_noise * eps, t_hat


def _edm_solver(
    denoiser: DenoiserLike,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    class_labels: torch.Tensor | None,
    noise: NoiseFn | None,
    s: ChurnSettings,
    *,
    second_order: bool,
) -> torch.Tensor:
    levels = sigmas.tolist()  # one host sync; the step sizes are then plain float64 scalars
    steps = len(levels) - 1
    x = x.to(torch.float64)
    for i in range(steps):
        t_cur, t_next = levels[i], levels[i + 1]
        x_hat, t_hat = _churn(denoiser, x, t_cur, steps, s, noise)
        d_cur = (x_hat - denoise(denoiser, x_hat, t_hat, class_labels)) / t_hat
        x = x_hat + (t_next - t_hat) * d_cur
        if second_order and i < steps - 1:  # the last step (to sigma = 0) stays Euler, as in EDM
            d_prime = (x - denoise(denoiser, x, t_next, class_labels)) / t_next
            x = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x


def heun(
    denoiser: DenoiserLike,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    class_labels: torch.Tensor | None = None,
    noise: NoiseFn | None = None,
    settings: object | None = None,
) -> torch.Tensor:
    """EDM's Heun 2nd-order sampler with optional stochastic churn (Karras et al. 2022, Algorithm 2)."""
    s = check_settings(settings, HeunSettings, "heun")
    return _edm_solver(denoiser, x, sigmas, class_labels, noise, s, second_order=True)


def euler(
    denoiser: DenoiserLike,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    class_labels: torch.Tensor | None = None,
    noise: NoiseFn | None = None,
    settings: object | None = None,
) -> torch.Tensor:
    """Euler method on the probability-flow ODE, optional churn (Karras et al. 2022, eq. 4 / Alg. 2)."""
    s = check_settings(settings, EulerSettings, "euler")
    return _edm_solver(denoiser, x, sigmas, class_labels, noise, s, second_order=False)


def dpmpp_2m(
    denoiser: DenoiserLike,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    class_labels: torch.Tensor | None = None,
    noise: NoiseFn | None = None,
    settings: object | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M), multistep data prediction (Lu et al. 2022, arXiv:2211.01095), EDM sigmas."""
    check_settings(settings, DPMSolverSettings, "dpmpp_2m")
    levels = sigmas.tolist()
    x = x.to(torch.float64)
    prev: torch.Tensor | None = None
    h_prev = 0.0
    for i in range(len(levels) - 1):
        s_cur, s_next = levels[i], levels[i + 1]
        denoised = denoise(denoiser, x, s_cur, class_labels)
        if s_next == 0:
            # lambda_next = +inf: the update's limit is the (first-order) data prediction itself; the
            # 2nd-order extrapolation would divide by an infinite step.
            x = denoised
            continue
        h = math.log(s_cur / s_next)  # lambda = -log(sigma) in EDM's parameterisation (alpha = 1)
        d = denoised
        if prev is not None:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * prev
        x = (s_next / s_cur) * x - math.expm1(-h) * d
        prev, h_prev = denoised, h
    return x
