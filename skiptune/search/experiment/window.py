"""The window stage's candidates: sigma windows of one pair, as subsets of the sampler's noise levels.

A sigma window acts only through the sampler's noise levels it contains (``sampling.levels``), and a
``[lo, hi]`` interval contains a *contiguous* run of them. So the window stage works on spans
``(first, last)`` of the descending level list, not on raw bounds: two bounds that select the same
levels are one candidate, a window with no level (it would leave the network untouched: the baseline)
is never proposed, and neither is the span of all levels (the full-range answer itself). A span's
bounds lie halfway in log sigma between its end levels and their outer neighbours (or a factor 2
beyond the sampler's ends), far from every level, so float rounding never moves a level across one.

Which spans (``next_spans``), screened on the search seeds with the pair fixed:

1. a coarse grid: the first and last levels alone (pure noise, and the final denoising step: the
   measured best windows, docs/analysis.md, exclude both at NFE 9 and 35), the levels between in
   ``groups - 2`` runs of equal count, and every contiguous union of these groups except all of them;
   every span when the levels are so few that they all fit the budget;
2. then a local search: the neighbours of the best span screened so far (one level more or less at
   either end) that were not screened yet, until the best span's neighbours are all screened or the
   budget (``window_trials``) is spent.

The best ``window_candidates`` spans that beat the full-range pair on the search seeds are then
validated on the held-out blocks (``experiment.pending_windows``); ``validate.prefer_window`` decides.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from skiptune.sampling.levels import levels_in_window
from skiptune.search.space import SearchSpace
from skiptune.skips import RHO_HARD_LIMITS

Span = tuple[int, int]  # (first, last): indices into the descending levels, inclusive

#: Coarse groups when the budget allows (4 groups: 9 spans).
COARSE_GROUPS = 4


def window_bounds(span: Span, levels: Sequence[float]) -> tuple[float, float]:
    """``(lo, hi)`` of the window selecting exactly ``levels[first..last]``."""
    first, last = span
    hi = math.sqrt(levels[first - 1] * levels[first]) if first > 0 else 2 * levels[0]
    lo = math.sqrt(levels[last] * levels[last + 1]) if last + 1 < len(levels) else levels[-1] / 2
    return lo, hi


def span_of(window: tuple[float, float] | None, levels: Sequence[float]) -> Span | None:
    """The span a window selects (all levels for no window); None when it selects none."""
    inside = levels_in_window(window, levels)
    return (inside[0], inside[-1]) if inside else None


def all_spans(n: int) -> list[Span]:
    """Every proper span of ``n`` levels (neither empty nor all of them)."""
    return [(i, j) for i in range(n) for j in range(i, n) if (i, j) != (0, n - 1)]


def coarse_spans(n: int, budget: int) -> list[Span]:
    """The coarse grid of step 1 (module docstring), at most ``budget`` spans."""
    if len(all_spans(n)) <= budget:
        return all_spans(n)
    groups = COARSE_GROUPS
    while groups > 2 and groups * (groups + 1) // 2 - 1 > budget:
        groups -= 1
    inner = n - 2
    cuts = [0, 1] + [1 + round(k * inner / (groups - 2)) for k in range(1, groups - 2)] + [n - 1, n]
    bounds = [(cuts[g], cuts[g + 1] - 1) for g in range(len(cuts) - 1)]
    spans = [(bounds[a][0], bounds[b][1]) for a in range(len(bounds)) for b in range(a, len(bounds))]
    return [s for s in spans if s != (0, n - 1)][:budget]


def neighbours(span: Span, n: int) -> list[Span]:
    """Spans one level longer or shorter at either end (proper ones only)."""
    first, last = span
    moves = [(first - 1, last), (first + 1, last), (first, last - 1), (first, last + 1)]
    return [(i, j) for i, j in moves if 0 <= i <= j < n and (i, j) != (0, n - 1)]


def next_spans(n: int, screened: Mapping[Span, float], budget: int) -> list[Span]:
    """The spans to screen next, given the values screened so far (``inf``: pruned or failed)."""
    left = budget - len(screened)
    if n < 2 or left <= 0:
        return []
    if not screened:
        return coarse_spans(n, left)
    best = min(screened, key=lambda s: (screened[s], s[1] - s[0]))
    if not math.isfinite(screened[best]):
        return []
    return [s for s in neighbours(best, n) if s not in screened][:left]


def window_params(pair: Mapping[str, float], span: Span, levels: Sequence[float]) -> dict[str, float]:
    """A window job's params: the pair and the span's bounds (as ``sigma_a <= sigma_b``)."""
    lo, hi = window_bounds(span, levels)
    return {"rho_bottom": float(pair["rho_bottom"]), "rho_top": float(pair["rho_top"]),
            "sigma_a": lo, "sigma_b": hi}  # fmt: skip


def window_space(pair: Mapping[str, float], levels: Sequence[float]) -> SearchSpace:
    """A space that holds ``pair`` and every span's bounds: the window phase's enqueued params."""

    def around(v: float) -> tuple[float, float]:
        return max(RHO_HARD_LIMITS[0], v - 0.01), min(RHO_HARD_LIMITS[1], v + 0.01)

    return SearchSpace(
        rho_bottom=around(float(pair["rho_bottom"])),
        rho_top=around(float(pair["rho_top"])),
        sigma_window=(min(levels) / 4, 4 * max(levels)),
    )
