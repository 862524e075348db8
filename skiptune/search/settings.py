"""The settings of an experiment's stages: validation, box growth, the window stage and refinement.

They are stored with the main study when it is created (``study.StudySpec.validation``) and fixed once a
validation round has run; ``experiment/`` reads them to plan its stages. What ``threshold`` and
``calibration`` mean is explained in ``experiment/validation.py``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from skiptune.errors import SkiptuneError
from skiptune.objectives.holdout import block_bounds
from skiptune.seeds import check_seed_range

#: Windows screened on the search seeds by default (9 coarse ones, then local moves; see experiment.window).
DEFAULT_WINDOW_TRIALS = 16
#: Held-out seeds start this far above the search's seed base: disjoint from any search block below 1e9.
HOLDOUT_OFFSET = 1_000_000_000
CALIBRATIONS = ("t", "normal")
REFINE_SHAPES = ("landscape", "square")
#: What a study stored before these settings existed behaves as (its answer must not move).
_BEFORE_STAGES: dict[str, Any] = {
    "calibration": "normal", "window_trials": 0, "refine_trials": 0, "refine_shape": "square"
}  # fmt: skip


@dataclass(frozen=True)
class ValidationSettings:
    """How a study validates its candidates (stored with the study; fixed once a round has run)."""

    n_samples: int  # held-out samples per candidate (default: 2x the search's n_samples)
    seed_base: int  # first held-out seed (default: the search's seed base + HOLDOUT_OFFSET)
    top_k: int = 3
    blocks: int = 10
    threshold: float = 2.0  # standard errors a gain must exceed
    growth_budget: int = 10  # extra search trials, all box growths together (0: never grow)
    edge: float = 0.05  # "at the edge": within this fraction of the box's width
    calibration: str = "t"  # "t": Student-t critical value for `blocks`; "normal": `threshold` as is
    window_trials: int = 0  # window stage: windows screened on the search seeds (0: no window stage)
    window_candidates: int = 2  # window stage: screened windows validated on the held-out seeds
    refine_trials: int = 0  # refinement: search trials in a small box around the answer (0: none)
    refine_radius: float = 0.1  # refinement box half-width, as a fraction of the search box's width
    refine_shape: str = "landscape"  # "landscape": sides from the trials' length scales (same area); "square"
    clip_guard: str | None = None  # prompt-alignment guard: a local CLIP folder (absolute path; None: off)
    clip_sha256: str | None = None  # that folder's identity (``objectives.clip_score``), checked by workers

    def __post_init__(self) -> None:
        block_bounds(self.n_samples, self.blocks)  # a clear error for too few samples per block
        checks = [
            (self.top_k >= 1, f"top-k {self.top_k}", "a positive integer, e.g. 3"),
            (self.seed_base >= 0, f"held-out seed base {self.seed_base}", "a non-negative integer"),
            (self.threshold > 0, f"threshold {self.threshold}", "a positive number of s.e., e.g. 2"),
            (self.growth_budget >= 0, f"growth budget {self.growth_budget}", "an integer >= 0 (0: off)"),
            (0 <= self.edge < 0.5, f"edge fraction {self.edge}", "a fraction in [0, 0.5), e.g. 0.05"),
            (self.calibration in CALIBRATIONS, f"calibration {self.calibration!r}", "t or normal"),
            (self.window_trials >= 0, f"window trials {self.window_trials}", "an integer >= 0 (0: off)"),
            (self.window_candidates >= 1, f"window candidates {self.window_candidates}", "an integer >= 1"),
            (self.refine_trials >= 0, f"refine trials {self.refine_trials}", "an integer >= 0 (0: off)"),
            (0 < self.refine_radius <= 0.5, f"refine radius {self.refine_radius}", "a fraction in (0, 0.5]"),
            (self.refine_shape in REFINE_SHAPES, f"refine shape {self.refine_shape!r}", "landscape/square"),
        ]
        for ok, what, expected in checks:
            if not ok:
                raise SkiptuneError(f"bad validation {what}: expected {expected}")
        if (self.clip_guard is None) != (self.clip_sha256 is None):
            raise SkiptuneError("bad validation CLIP guard: expected a folder and its identity, or neither")
        check_seed_range(self.seed_base, self.n_samples, "held-out seed base", "--validate-seed-base")

    def check_disjoint(self, search_seed_base: int, search_samples: int) -> None:
        """Refuse held-out seeds that overlap the search's seeds (they would not be held out)."""
        lo, hi = self.seed_base, self.seed_base + self.n_samples
        if lo < search_seed_base + search_samples and search_seed_base < hi:
            raise SkiptuneError(
                f"held-out seeds {lo}-{hi - 1} overlap the search's seeds {search_seed_base}-"
                f"{search_seed_base + search_samples - 1}; choose a --validate-seed-base outside them"
            )

    @property
    def critical(self) -> float:
        """The standard errors a gain must exceed: ``threshold`` as calibrated (see the module docstring)."""
        if self.calibration == "normal":
            return self.threshold
        from scipy.stats import norm, t

        return float(t.ppf(norm.cdf(self.threshold), self.blocks - 1))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidationSettings:
        """Settings as stored; keys a study stored before they existed keep that study's behaviour:
        the fixed threshold, no window stage, no refinement, no CLIP guard."""
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**{**_BEFORE_STAGES, **known})

    @classmethod
    def default_for(
        cls, *, search_samples: int, search_seed_base: int, n_trials: int, **changes: Any
    ) -> ValidationSettings:
        """Defaults for a search of ``n_trials`` x ``search_samples``; non-None ``changes`` win."""
        base = dict(
            n_samples=2 * search_samples,
            seed_base=search_seed_base + HOLDOUT_OFFSET,
            growth_budget=math.ceil(n_trials / 3),
            window_trials=DEFAULT_WINDOW_TRIALS,
            refine_trials=math.ceil(n_trials / 2),
        )
        return cls(**{**base, **{k: v for k, v in changes.items() if v is not None}})
