"""A search box that follows the optimum: grow the side of the box the validated best is pressed against.

A fixed box can hide the optimum (on the demo model, Heun NFE 5's best pair lies near (0.3, 0.4)).
When the validated best lies within ``edge`` x width of a side that is not a hard limit, that side moves
out by half the box's width (clamped to the hard limits), and a bounded extra search runs in the grown box.

The other way round, a refinement (``refine_space``) searches a small box around the answer once more:
a single TPE run can stop short of a real optimum (docs/results.md: two runs of the same study answered
+2.1% and no-gain), most easily next to (1, 1), which a no-gain answer refines around.
"""

from __future__ import annotations

import math
from dataclasses import replace

from skiptune.search.space import SearchSpace
from skiptune.skips import RHO_HARD_LIMITS  # a grown box stays within them


def _grow_side(
    value: float, box: tuple[float, float], edge: float, limits: tuple[float, float]
) -> tuple[float, float]:
    lo, hi = box
    width = hi - lo
    new_lo, new_hi = lo, hi
    if value - lo <= edge * width and lo > limits[0]:
        new_lo = max(limits[0], lo - width / 2)
    if hi - value <= edge * width and hi < limits[1]:
        new_hi = min(limits[1], hi + width / 2)
    return new_lo, new_hi


def grown_space(space: SearchSpace, best: dict[str, float], *, edge: float) -> SearchSpace | None:
    """The box grown towards ``best`` (params of the validated best), or None if it is inside the box."""
    boxes = {}
    for name in ("rho_bottom", "rho_top"):
        box: tuple[float, float] = getattr(space, name)
        value = float(best[name])
        if not math.isfinite(value):
            return None
        boxes[name] = _grow_side(value, box, edge, RHO_HARD_LIMITS)
    if all(boxes[n] == getattr(space, n) for n in boxes):
        return None
    return replace(space, rho_bottom=boxes["rho_bottom"], rho_top=boxes["rho_top"])


def refine_space(
    box: SearchSpace, center: dict[str, float], *, radius: float, aspect: float = 1.0
) -> SearchSpace:
    """A box of half-widths ``radius`` x ``box``'s widths x (``aspect``, 1 / ``aspect``) around ``center``
    (clamped to the hard limits; ``refine_shape`` chooses the aspect)."""
    sides = {}
    for name, factor in (("rho_bottom", aspect), ("rho_top", 1 / aspect)):
        lo, hi = getattr(box, name)
        half = radius * (hi - lo) * factor
        value = float(center[name])
        sides[name] = (max(RHO_HARD_LIMITS[0], value - half), min(RHO_HARD_LIMITS[1], value + half))
    return replace(box, rho_bottom=sides["rho_bottom"], rho_top=sides["rho_top"])
