"""EDM's noise-level discretisation (Karras et al. 2022, eq. 5), clamped to the network and cached."""

from __future__ import annotations

import math
import weakref
from dataclasses import asdict, dataclass
from typing import Any

import torch

from skiptune.errors import SkiptuneError
from skiptune.sampling.contract import Denoiser, DenoiserLike, as_denoiser

# denoiser -> {(steps, device, schedule): sigmas}; weak so a cached schedule never keeps a net alive.
_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple[int, str, EDMSchedule], torch.Tensor]]
_CACHE = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class EDMSchedule:
    """``sigma_i = (s_max^(1/rho) + i/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho``, then ``sigma_N = 0``."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    def __post_init__(self) -> None:
        if not (0 < self.sigma_min < self.sigma_max < math.inf) or not self.rho > 0:
            raise SkiptuneError(
                f"bad EDM schedule {self}: expected 0 < sigma_min < sigma_max < inf and rho > 0 "
                "(EDM's defaults are 0.002, 80, 7)"
            )

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def sigmas(self, denoiser: DenoiserLike, steps: int, *, device: torch.device | str) -> torch.Tensor:
        """float64 ``[steps + 1]`` noise levels on ``device``, built once per (denoiser, steps, device).

        The returned tensor is shared by later calls: do not modify it.
        """
        key = (int(steps), str(torch.device(device)), self)
        try:
            per_net = _CACHE.setdefault(denoiser, {})
        except TypeError:  # not weak-referenceable: build every time (cheap, just not cached)
            per_net = {}
        if key not in per_net:
            per_net[key] = self._build(as_denoiser(denoiser), steps, torch.device(device))
        return per_net[key]

    def _build(self, denoiser: Denoiser, steps: int, device: torch.device) -> torch.Tensor:
        if steps < 1:
            raise SkiptuneError(f"number of sampling steps {steps} must be >= 1")
        # Clamp to what the network supports, as EDM's samplers do.
        lo = max(self.sigma_min, float(denoiser.sigma_min))
        hi = min(self.sigma_max, float(denoiser.sigma_max))
        if not 0 < lo <= hi:
            raise SkiptuneError(
                f"noise range [{self.sigma_min}, {self.sigma_max}] and the network's supported range "
                f"[{denoiser.sigma_min}, {denoiser.sigma_max}] leave no positive interval; "
                "choose sigma_min/sigma_max inside the network's range"
            )
        # One step has no interior point: it goes straight from sigma_max to 0.
        frac = torch.arange(steps, dtype=torch.float64, device=device) / max(steps - 1, 1)
        inv_rho = 1.0 / self.rho
        levels = (hi**inv_rho + frac * (lo**inv_rho - hi**inv_rho)) ** self.rho
        fn = getattr(denoiser, "round_sigma", None)
        if fn is not None:
            # on the device, as EDM does: iDDPM's rounding indexes a table held by the network
            levels = torch.as_tensor(fn(levels)).to(device=device, dtype=torch.float64)
        return torch.cat([levels, levels.new_zeros(1)])


def edm_sigmas(
    denoiser: DenoiserLike,
    steps: int,
    *,
    device: torch.device | str,
    schedule: EDMSchedule | None = None,
) -> torch.Tensor:
    """EDM's noise levels for ``steps`` steps (final 0 appended), clamped and rounded for ``denoiser``."""
    return (schedule or EDMSchedule()).sigmas(denoiser, steps, device=device)


__all__ = ["EDMSchedule", "edm_sigmas"]
