"""Every sampler, one function each, registered by name with its settings and NFE rule (k-diffusion style).

Each has the signature of :class:`~skiptune.sampling.contract.SamplerFn`; ``@register_sampler`` adds
the settings check, so a body receives its own settings type. The state is stepped in float64, as in
EDM's ``generate.py``; the result is float64. A new sampler is one more function here (and its settings
dataclass above it, when it has free settings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from skiptune.sampling.contract import DenoiserLike, NoiseFn, denoise, round_sigma
from skiptune.sampling.nfe import NFERule
from skiptune.sampling.registry import register_sampler
from skiptune.sampling.settings import ChurnSettings, NoSettings


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


@dataclass(frozen=True)
class HeunSettings(ChurnSettings):
    """Settings of EDM's Heun sampler."""


# 2 evaluations per step, but the last step (to sigma = 0) is Euler, as in EDM
@register_sampler("heun", settings=HeunSettings, nfe=NFERule(2, saved=1))
def heun(
    denoiser: DenoiserLike,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    class_labels: torch.Tensor | None,
    noise: NoiseFn | None,
    settings: HeunSettings,
) -> torch.Tensor:
    """EDM's Heun 2nd-order sampler with optional stochastic churn (Karras et al. 2022, Algorithm 2)."""
    return _edm_solver(denoiser, x, sigmas, class_labels, noise, settings, second_order=True)


@dataclass(frozen=True)
class EulerSettings(ChurnSettings):
    """Settings of the Euler sampler (EDM's ablation sampler with ``solver='euler'``)."""


@register_sampler("euler", settings=EulerSettings, nfe=NFERule(1))
def euler(
    denoiser: DenoiserLike,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    class_labels: torch.Tensor | None,
    noise: NoiseFn | None,
    settings: EulerSettings,
) -> torch.Tensor:
    """Euler method on the probability-flow ODE, optional churn (Karras et al. 2022, eq. 4 / Alg. 2)."""
    return _edm_solver(denoiser, x, sigmas, class_labels, noise, settings, second_order=False)


@dataclass(frozen=True)
class DPMSolverSettings(NoSettings):
    """DPM-Solver++(2M) has no free settings."""


@register_sampler("dpmpp_2m", settings=DPMSolverSettings, nfe=NFERule(1))
def dpmpp_2m(
    denoiser: DenoiserLike,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    class_labels: torch.Tensor | None,
    noise: NoiseFn | None,
    settings: DPMSolverSettings,
) -> torch.Tensor:
    """DPM-Solver++(2M), multistep data prediction (Lu et al. 2022, arXiv:2211.01095), EDM sigmas."""
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
