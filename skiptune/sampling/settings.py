"""Settings shared by samplers: frozen dataclasses a study records with ``to_dict()``.

A sampler's own settings type sits next to it in :mod:`skiptune.sampling.samplers`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from skiptune.errors import SkiptuneError


class SamplerSettings(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ChurnSettings:
    """EDM's stochastic churn (Algorithm 2): ``S_churn, S_min, S_max, S_noise``; ``s_churn=0`` is the ODE."""

    s_churn: float = 0.0
    s_min: float = 0.0
    s_max: float = math.inf
    s_noise: float = 1.0

    def __post_init__(self) -> None:
        ok = (
            math.isfinite(self.s_churn)
            and self.s_churn >= 0
            and 0 <= self.s_min <= self.s_max
            and math.isfinite(self.s_noise)
        )
        if not ok:
            raise SkiptuneError(
                f"bad churn settings {self}: expected finite s_churn >= 0, 0 <= s_min <= s_max (inf allowed) "
                "and finite s_noise (EDM's deterministic default: s_churn=0, s_min=0, s_max=inf, s_noise=1)"
            )

    @property
    def stochastic(self) -> bool:
        return self.s_churn > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class NoSettings:
    """The settings of a sampler without free settings, so every sampler records the same way."""

    def to_dict(self) -> dict[str, Any]:
        return {}
