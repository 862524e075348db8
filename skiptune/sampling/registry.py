"""Samplers by name: each registered with its function, settings type and NFE <-> steps mapping."""

from __future__ import annotations

import operator
from dataclasses import dataclass, fields
from typing import Any

from skiptune.errors import SkiptuneError
from skiptune.registry import Registry
from skiptune.sampling.samplers import SamplerFn, check_settings, dpmpp_2m, euler, heun
from skiptune.sampling.settings import DPMSolverSettings, EulerSettings, HeunSettings


@dataclass(frozen=True)
class SamplerSpec:
    """``nfe = nfe_per_step * steps - nfe_saved`` for ``steps >= 1`` network evaluations.

    Heun: 2 per step, the last step (to sigma = 0) is Euler, so ``2 * steps - 1``; Euler and
    DPM-Solver++(2M): one per step.
    """

    name: str
    fn: SamplerFn
    settings_type: type
    nfe_per_step: int
    nfe_saved: int = 0

    @property
    def min_nfe(self) -> int:
        return self.nfe_for_steps(1)

    def nfe_for_steps(self, steps: int) -> int:
        return self.nfe_per_step * steps - self.nfe_saved

    def steps_for_nfe(self, nfe: int) -> int:
        """Steps that spend exactly ``nfe`` evaluations; an error names the nearest valid NFEs."""
        try:
            nfe = operator.index(nfe)
        except TypeError:
            raise SkiptuneError(f"NFE {nfe!r} for sampler {self.name!r} must be an integer") from None
        steps, rest = divmod(nfe + self.nfe_saved, self.nfe_per_step)
        if rest == 0 and steps >= 1:
            return steps
        near = sorted({max(self.nfe_for_steps(k), self.min_nfe) for k in (steps, steps + 1)})
        raise SkiptuneError(
            f"sampler {self.name!r} cannot spend NFE={nfe} (it spends {self._formula()}, steps >= 1); "
            f"nearest valid NFE: {' or '.join(map(str, near))}"
        )

    def _formula(self) -> str:
        base = "steps" if self.nfe_per_step == 1 else f"{self.nfe_per_step}*steps"
        return base + (f" - {self.nfe_saved}" if self.nfe_saved else "")

    def default_settings(self) -> Any:
        return self.settings_type()

    def check_settings(self, settings: object | None) -> Any:
        """``settings`` if it suits this sampler, defaults for ``None``, else a :class:`SkiptuneError`."""
        return check_settings(settings, self.settings_type, self.name)

    def settings_from_dict(self, values: dict[str, Any]) -> Any:
        """Rebuild recorded settings (``to_dict()`` output); unknown keys are an error naming known ones."""
        known = {f.name for f in fields(self.settings_type)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SkiptuneError(
                f"unknown {self.name} sampler setting(s) {', '.join(unknown)}; "
                f"expected some of: {', '.join(sorted(known)) or '(none)'}"
            )
        return self.settings_type(**values)


SAMPLERS: Registry[SamplerSpec] = Registry("sampler")
SAMPLERS.register("heun", SamplerSpec("heun", heun, HeunSettings, nfe_per_step=2, nfe_saved=1))
SAMPLERS.register("euler", SamplerSpec("euler", euler, EulerSettings, nfe_per_step=1))
SAMPLERS.register("dpmpp_2m", SamplerSpec("dpmpp_2m", dpmpp_2m, DPMSolverSettings, nfe_per_step=1))
