"""NFE accounting: how many network evaluations a sampler spends for a number of steps, and back."""

from __future__ import annotations

import operator
from dataclasses import dataclass

from skiptune.errors import SkiptuneError


@dataclass(frozen=True)
class NFERule:
    """``nfe = per_step * steps - saved`` for ``steps >= 1``.

    EDM's Heun spends 2 per step but its last step (to sigma = 0) is Euler: ``NFERule(2, saved=1)``;
    Euler and DPM-Solver++(2M) spend one per step: ``NFERule(1)``.
    """

    per_step: int
    saved: int = 0

    def __post_init__(self) -> None:
        # A rule with saved >= per_step would give one step zero (or fewer) evaluations.
        if not (self.per_step >= 1 and 0 <= self.saved < self.per_step):
            raise ValueError(f"bad NFE rule {self!r}: expected per_step >= 1 and 0 <= saved < per_step")

    @property
    def min_nfe(self) -> int:
        return self.nfe_for_steps(1)

    def nfe_for_steps(self, steps: int) -> int:
        return self.per_step * steps - self.saved

    def steps_for_nfe(self, nfe: int, *, sampler: str) -> int:
        """Steps that spend exactly ``nfe`` evaluations; an error names ``sampler`` and the nearest NFEs."""
        try:
            nfe = operator.index(nfe)
        except TypeError:
            raise SkiptuneError(f"NFE {nfe!r} for sampler {sampler!r} must be an integer") from None
        steps, rest = divmod(nfe + self.saved, self.per_step)
        if rest == 0 and steps >= 1:
            return steps
        near = sorted({max(self.nfe_for_steps(k), self.min_nfe) for k in (steps, steps + 1)})
        raise SkiptuneError(
            f"sampler {sampler!r} cannot spend NFE={nfe} (it spends {self}, steps >= 1); "
            f"nearest valid NFE: {' or '.join(map(str, near))}"
        )

    def __str__(self) -> str:
        base = "steps" if self.per_step == 1 else f"{self.per_step}*steps"
        return base + (f" - {self.saved}" if self.saved else "")
