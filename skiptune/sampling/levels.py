"""The noise levels at which a sampler evaluates the network: where a sigma window can act at all.

Every registered sampler evaluates the denoiser at the nonzero levels of its EDM schedule (Heun and
Euler at ``t_cur``, Heun's correction at ``t_next``, DPM-Solver++(2M) at each ``sigma_i``; with churn,
at ``t_hat = t_cur (1 + gamma)``, gamma <= sqrt(2) - 1, slightly above ``t_cur``). A skip window
``[lo, hi]`` therefore changes a sampler's output only through the subset of these levels it contains:
two windows with the same subset give the same images, and a window with none of them gives the
untuned network's images.
"""

from __future__ import annotations

from collections.abc import Sequence

from skiptune.sampling.contract import DenoiserLike
from skiptune.sampling.registry import SAMPLERS
from skiptune.sampling.schedule import EDMSchedule


def evaluated_sigmas(denoiser: DenoiserLike, sampler: str, nfe: int) -> list[float]:
    """The nonzero noise levels of ``sampler``'s EDM schedule at ``nfe`` for ``denoiser``, descending."""
    steps = SAMPLERS.get(sampler).steps_for_nfe(nfe)
    return [float(v) for v in EDMSchedule().sigmas(denoiser, steps, device="cpu").tolist() if v > 0]


def levels_in_window(window: tuple[float, float] | None, levels: Sequence[float]) -> tuple[int, ...]:
    """Indices (into ``levels``) of the levels with ``lo <= sigma <= hi``; all of them for no window."""
    if window is None:
        return tuple(range(len(levels)))
    lo, hi = window
    return tuple(i for i, v in enumerate(levels) if lo <= v <= hi)
