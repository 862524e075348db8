"""The search space: (rho_bottom, rho_top) boxes and an optional sigma window, as Optuna params.

Default box [0.2, 1.2] for both coefficients. Skip-Tuning (Ma et al., ICML 2024) reports tuned values
of 0.6-1.0 for EDM samplers at few NFE; on the bundled demo model the held-out optima measured in
docs/results.md lie between about 0.3 (Heun NFE 5, outside the earlier default [0.5, 1.2]) and 1.15.
1.2 keeps (1, 1), the untuned network, an interior point so the search can also find that amplifying
skips helps. A box whose validated best presses against a side grows there (``growth.py``); change it
with --rho-bottom-range / --rho-top-range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import FloatDistribution

from skiptune.errors import SkiptuneError
from skiptune.skips import RHO_HARD_LIMITS, SkipSchedule

DEFAULT_RHO_RANGE = (0.2, 1.2)
BASELINE_PARAMS: dict[str, float] = {"rho_bottom": 1.0, "rho_top": 1.0}


@dataclass(frozen=True)
class SearchSpace:
    """Bounds of the searched coefficients; ``sigma_window`` bounds (log-uniform) turn on window search."""

    rho_bottom: tuple[float, float] = DEFAULT_RHO_RANGE
    rho_top: tuple[float, float] = DEFAULT_RHO_RANGE
    sigma_window: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        for name, (lo, hi) in (("rho_bottom", self.rho_bottom), ("rho_top", self.rho_top)):
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo < hi):
                raise SkiptuneError(f"bad {name} range ({lo}, {hi}): expected 0 <= low < high, e.g. 0.5 1.2")
            if not RHO_HARD_LIMITS[0] <= lo < hi <= RHO_HARD_LIMITS[1]:
                raise SkiptuneError(
                    f"bad {name} range ({lo:g}, {hi:g}): outside the hard limits [{RHO_HARD_LIMITS[0]:g}, "
                    f"{RHO_HARD_LIMITS[1]:g}] of skip coefficients; pass a range inside them, e.g. 0.5 1.2"
                )
        if self.sigma_window is not None:
            lo, hi = self.sigma_window
            if not (0 < lo < hi and math.isfinite(hi)):
                raise SkiptuneError(
                    f"bad sigma window range ({lo}, {hi}): expected 0 < low < high, e.g. 0.002 80"
                )

    def distributions(self) -> dict[str, FloatDistribution]:
        out: dict[str, FloatDistribution] = {
            "rho_bottom": FloatDistribution(*self.rho_bottom),
            "rho_top": FloatDistribution(*self.rho_top),
        }
        if self.sigma_window is not None:
            # Two unordered ends, sorted into a window: a fixed (not dynamic) space keeps TPE multivariate.
            out["sigma_a"] = FloatDistribution(*self.sigma_window, log=True)
            out["sigma_b"] = FloatDistribution(*self.sigma_window, log=True)
        return out

    def suggest(self, trial: optuna.Trial) -> SkipSchedule:
        """Suggest (or read back, for enqueued trials) the params of ``trial`` as a schedule."""
        values = {
            name: trial.suggest_float(name, dist.low, dist.high, log=dist.log)
            for name, dist in self.distributions().items()
        }
        return schedule_from_params(values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rho_bottom": list(self.rho_bottom),
            "rho_top": list(self.rho_top),
            "sigma_window": list(self.sigma_window) if self.sigma_window else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpace:
        window = data.get("sigma_window")
        return cls(
            rho_bottom=(float(data["rho_bottom"][0]), float(data["rho_bottom"][1])),
            rho_top=(float(data["rho_top"][0]), float(data["rho_top"][1])),
            sigma_window=(float(window[0]), float(window[1])) if window else None,
        )


def schedule_from_params(params: dict[str, Any]) -> SkipSchedule:
    """The skip schedule a trial's params stand for (params of a finished trial or a suggestion)."""
    window = None
    if "sigma_a" in params and "sigma_b" in params:
        a, b = float(params["sigma_a"]), float(params["sigma_b"])
        window = (min(a, b), max(a, b))
    return SkipSchedule(
        rho_bottom=float(params["rho_bottom"]), rho_top=float(params["rho_top"]), sigma_window=window
    )
