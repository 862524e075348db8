"""Held-out validation: the paired gain over the baseline with its standard error, and the decision.

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

Prompt-alignment guard (text-to-image studies created with ``--clip-guard``). Each job also records its
blocks' sums of per-sample CLIP scores (``objectives.clip_score``), so the change of the mean CLIP score
(candidate - baseline, paired per (seed, prompt)) has the same jackknife s.e. over the same blocks. A
candidate whose score drops by more than the critical value in standard errors (``clip_drops``) is not
recommended: it is left out before the rule above picks the best, and if none is left the answer is
(1, 1), ``no-gain``.

Calibration (settings: ``skiptune.search.settings``). ``threshold`` (default 2) is a number of standard
errors *as if normal*. With B blocks the jackknife s.e. has B - 1 degrees of freedom, so the gain / s.e.
ratio is t-distributed, heavier-tailed than a normal: a fixed 2 covered ~88-92% (docs/results.md).
Studies created now use ``calibration="t"``: the critical value is the Student-t quantile with B - 1
degrees of freedom at the normal's one-sided level for ``threshold`` (2 -> 97.7%: 2.32 for 10 blocks,
2.14 for 20, 3.31 for 4). Studies stored before this record no calibration and keep the fixed
``threshold`` (``"normal"``), so their answers do not move.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from skiptune.errors import SkiptuneError
from skiptune.objectives.holdout import BlockDistances

VALIDATED = "validated"
NO_GAIN = "no-gain"


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
    clip_value: float | None = None  # mean CLIP score of the candidate (guard on; None: not recorded)
    clip_baseline: float | None = None  # mean CLIP score of the baseline
    clip_change: float | None = None  # candidate - baseline (< 0: the candidate matches its prompts less)
    clip_change_se: float | None = None

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
    clip: dict[str, float] = {}
    mine, theirs = candidate.clip_means(), baseline.clip_means()
    if mine is not None and theirs is not None:
        paired = [c - b for c, b in zip(mine[1], theirs[1], strict=True)]
        clip = dict(clip_value=mine[0], clip_baseline=theirs[0], clip_change=mine[0] - theirs[0],
                    clip_change_se=_jackknife_se(paired))  # fmt: skip
    return Comparison(
        params=dict(params),
        value=candidate.value,
        baseline_value=baseline.value,
        gain=baseline.value - candidate.value,
        gain_se=_jackknife_se([b - c for b, c in pairs]),
        relative_gain=(baseline.value - candidate.value) / baseline.value,
        relative_gain_se=_jackknife_se([(b - c) / b for b, c in pairs]),
        n_samples=candidate.n_samples,
        **clip,
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
    clip_rejected: tuple[Comparison, ...] = ()  # candidates the prompt-alignment guard left out


def clip_drops(comparison: Comparison, *, threshold: float) -> bool:
    """Whether the candidate's mean CLIP score falls below the baseline's by more than ``threshold`` s.e.
    (or was not recorded: a guarded study recommends only what it measured)."""
    change, se = comparison.clip_change, comparison.clip_change_se
    if change is None or se is None:
        return True
    return change < 0 and -change > threshold * se


def _distance_to_identity(params: dict[str, float]) -> float:
    return math.hypot(params["rho_bottom"] - 1.0, params["rho_top"] - 1.0)


def decide(
    baseline_params: dict[str, float],
    baseline: BlockDistances,
    candidates: Sequence[tuple[dict[str, float], BlockDistances]],
    *,
    threshold: float,
    clip_guard: bool = False,
) -> Decision:
    """The recommendation among validated ``candidates`` (see the module docstring for the rule);
    ``clip_guard``: leave out candidates whose CLIP score drops significantly (``clip_drops``)."""
    if not candidates:
        raise SkiptuneError("no validated candidate to decide on; run the validation jobs first")
    comparisons = tuple(compare(p, d, baseline) for p, d in candidates)
    rejected = tuple(c for c in comparisons if clip_guard and clip_drops(c, threshold=threshold))
    allowed = [c for c in comparisons if c not in rejected]
    best = min(allowed or comparisons, key=lambda c: (c.value, -c.z, _distance_to_identity(c.params)))
    significant = bool(allowed) and best.gain > 0 and best.gain > threshold * best.gain_se
    params = best.params if significant else dict(baseline_params)
    return Decision(VALIDATED if significant else NO_GAIN, params, best, comparisons, clip_rejected=rejected)


def prefer_window(
    full: Decision,
    full_answer: BlockDistances,
    baseline_params: dict[str, float],
    baseline: BlockDistances,
    windowed: Sequence[tuple[dict[str, float], BlockDistances]],
    *,
    threshold: float,
    clip_guard: bool = False,
) -> Decision:
    """The answer among the full-range decision ``full`` and ``windowed`` candidates (the same pair in a
    sigma window), on the same held-out blocks. ``full_answer``: the held-out distances of ``full.params``
    (the baseline's for no-gain). The best windowed candidate replaces the full-range answer only if it
    beats the baseline by ``threshold`` s.e. (``decide``) *and* the full-range answer by ``threshold`` s.e.
    of their paired difference; otherwise the full-range answer stands, with the window's evidence."""
    if not windowed:
        return full
    inner = decide(baseline_params, baseline, windowed, threshold=threshold, clip_guard=clip_guard)
    blocks = next(d for p, d in windowed if p == inner.best.params)
    versus = compare(inner.best.params, blocks, full_answer)
    wins = inner.status == VALIDATED and versus.gain > 0 and versus.gain > threshold * versus.gain_se
    rejected = full.clip_rejected + inner.clip_rejected
    if not wins:
        return replace(full, comparisons=full.comparisons + inner.comparisons, full_range=full.best,
                       window=inner.best, versus_full=versus, clip_rejected=rejected)  # fmt: skip
    return Decision(VALIDATED, inner.params, inner.best, full.comparisons + inner.comparisons,
                    full_range=full.best, window=inner.best, versus_full=versus,
                    clip_rejected=rejected)  # fmt: skip
