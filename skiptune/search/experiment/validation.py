"""Held-out validation: settings, the paired gain over the baseline with its standard error, the decision.

The minimum of noisy trials on the search's own seeds is biased low (the winner's curse), so the answer a
study gives is decided on a held-out block of seeds that no search trial used. The top-K distinct
candidates and the baseline (1, 1) are each evaluated there on the *same* seeds (common random numbers),
so their paired difference is far less noisy than either value.

Estimator. The Fréchet distance is not a mean over samples, so its spread is estimated by a
delete-a-group jackknife: the held-out seeds are split into B contiguous blocks; ``theta`` is the gain
on all blocks and ``theta_b`` the gain with block b left out (both sides without the same block), and

    se(theta) = sqrt((B - 1) / B * sum_b (theta_b - mean_b theta_b)^2)

(Efron & Stein; consistent for smooth statistics such as a distance between Gaussian fits). Its
calibration on the demo model is measured in docs/results.md.

Decision. The recommendation is the validated candidate with the best (lowest) held-out distance if its
gain over the baseline exceeds the critical value in standard errors; otherwise the untouched network
(1, 1), with status ``no-gain``. Equal held-out distances go to the larger z, then to the pair nearest
(1, 1) (the smaller intervention). Windowed candidates (the window stage, ``experiment.window``) are decided
among themselves by the same rule, and a windowed answer replaces the full-range one only if its paired
gain over the full-range answer, on the same blocks, also exceeds the critical value (``prefer_window``).

Calibration. ``threshold`` (default 2) is a number of standard errors *as if normal*. With B blocks the
jackknife s.e. has B - 1 degrees of freedom, so the gain / s.e. ratio is t-distributed, heavier-tailed
than a normal: a fixed 2 covered ~88-92% (docs/results.md). Studies created now use ``calibration="t"``:
the critical value is the Student-t quantile with B - 1 degrees of freedom at the normal's one-sided
level for ``threshold`` (2 -> 97.7%: 2.32 for 10 blocks, 2.14 for 20, 3.31 for 4). Studies stored before
this record no calibration and keep the fixed ``threshold`` (``"normal"``), so their answers do not move.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from skiptune.errors import SkiptuneError
from skiptune.objectives.holdout import BlockDistances, block_bounds
from skiptune.seeds import check_seed_range

#: Windows screened on the search seeds by default (9 coarse ones, then local moves; see experiment.window).
DEFAULT_WINDOW_TRIALS = 16
#: Held-out seeds start this far above the search's seed base: disjoint from any search block below 1e9.
HOLDOUT_OFFSET = 1_000_000_000
VALIDATED = "validated"
NO_GAIN = "no-gain"
CALIBRATIONS = ("t", "normal")
#: What a study stored before these settings existed behaves as (its answer must not move).
_BEFORE_STAGES: dict[str, Any] = {"calibration": "normal", "window_trials": 0, "refine_trials": 0}


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
        ]
        for ok, what, expected in checks:
            if not ok:
                raise SkiptuneError(f"bad validation {what}: expected {expected}")
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
        the fixed threshold, no window stage, no refinement."""
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
            refine_trials=math.ceil(n_trials / 4),
        )
        return cls(**{**base, **{k: v for k, v in changes.items() if v is not None}})


@dataclass(frozen=True)
class Comparison:
    """One candidate against the baseline on the same held-out seeds (gain > 0: the candidate is better)."""

    params: dict[str, float]
    value: float
    baseline_value: float
    gain: float  # baseline - candidate
    gain_se: float
    relative_gain: float  # gain / baseline
    relative_gain_se: float
    n_samples: int

    @property
    def z(self) -> float:
        if self.gain_se > 0:
            return self.gain / self.gain_se
        return math.inf if self.gain > 0 else (0.0 if self.gain == 0 else -math.inf)


def _jackknife_se(full_minus: Sequence[float]) -> float:
    k = len(full_minus)
    mean = sum(full_minus) / k
    return math.sqrt((k - 1) / k * sum((t - mean) ** 2 for t in full_minus))


def compare(params: dict[str, float], candidate: BlockDistances, baseline: BlockDistances) -> Comparison:
    """The paired gain of ``candidate`` over ``baseline`` and its jackknife standard errors."""
    if (candidate.seed_base, candidate.n_samples, len(candidate.leave_one_out)) != (
        baseline.seed_base,
        baseline.n_samples,
        len(baseline.leave_one_out),
    ):
        raise SkiptuneError(
            "cannot pair held-out results made on different seeds or blocks "
            f"({candidate.seed_base}+{candidate.n_samples} vs {baseline.seed_base}+{baseline.n_samples})"
        )
    pairs = list(zip(baseline.leave_one_out, candidate.leave_one_out))
    return Comparison(
        params=dict(params),
        value=candidate.value,
        baseline_value=baseline.value,
        gain=baseline.value - candidate.value,
        gain_se=_jackknife_se([b - c for b, c in pairs]),
        relative_gain=(baseline.value - candidate.value) / baseline.value,
        relative_gain_se=_jackknife_se([(b - c) / b for b, c in pairs]),
        n_samples=candidate.n_samples,
    )


@dataclass(frozen=True)
class Decision:
    status: str  # VALIDATED or NO_GAIN
    params: dict[str, float]  # the recommendation ((1, 1) for no-gain)
    best: Comparison  # the recommended candidate (the best validated one, significant or not)
    comparisons: tuple[Comparison, ...]
    full_range: Comparison | None = None  # with windowed candidates: the best full-range one
    window: Comparison | None = None  # with windowed candidates: the best windowed one
    versus_full: Comparison | None = None  # that window against the full-range answer (gain > 0: better)


def _distance_to_identity(params: dict[str, float]) -> float:
    return math.hypot(params["rho_bottom"] - 1.0, params["rho_top"] - 1.0)


def decide(
    baseline_params: dict[str, float],
    baseline: BlockDistances,
    candidates: Sequence[tuple[dict[str, float], BlockDistances]],
    *,
    threshold: float,
) -> Decision:
    """The recommendation among validated ``candidates`` (see the module docstring for the rule)."""
    if not candidates:
        raise SkiptuneError("no validated candidate to decide on; run the validation jobs first")
    comparisons = tuple(compare(p, d, baseline) for p, d in candidates)
    best = min(comparisons, key=lambda c: (c.value, -c.z, _distance_to_identity(c.params)))
    significant = best.gain > 0 and best.gain > threshold * best.gain_se
    params = best.params if significant else dict(baseline_params)
    return Decision(VALIDATED if significant else NO_GAIN, params, best, comparisons)


def prefer_window(
    full: Decision,
    full_answer: BlockDistances,
    baseline_params: dict[str, float],
    baseline: BlockDistances,
    windowed: Sequence[tuple[dict[str, float], BlockDistances]],
    *,
    threshold: float,
) -> Decision:
    """The answer among the full-range decision ``full`` and ``windowed`` candidates (the same pair in a
    sigma window), on the same held-out blocks. ``full_answer``: the held-out distances of ``full.params``
    (the baseline's for no-gain). The best windowed candidate replaces the full-range answer only if it
    beats the baseline by ``threshold`` s.e. (``decide``) *and* the full-range answer by ``threshold`` s.e.
    of their paired difference; otherwise the full-range answer stands, with the window's evidence."""
    if not windowed:
        return full
    inner = decide(baseline_params, baseline, windowed, threshold=threshold)
    blocks = next(d for p, d in windowed if p == inner.best.params)
    versus = compare(inner.best.params, blocks, full_answer)
    wins = inner.status == VALIDATED and versus.gain > 0 and versus.gain > threshold * versus.gain_se
    if not wins:
        return replace(full, comparisons=full.comparisons + inner.comparisons, full_range=full.best,
                       window=inner.best, versus_full=versus)  # fmt: skip
    return Decision(VALIDATED, inner.params, inner.best, full.comparisons + inner.comparisons,
                    full_range=full.best, window=inner.best, versus_full=versus)  # fmt: skip
