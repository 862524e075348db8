"""Samplers by name: ``@register_sampler`` records a sampler with its settings type and NFE rule.

A new sampler is one function in :mod:`skiptune.sampling.samplers` (its settings dataclass, if it has
free settings, right above it)::

    @register_sampler("heun", settings=HeunSettings, nfe=NFERule(2, saved=1))
    def heun(denoiser, x, sigmas, *, class_labels, noise, settings: HeunSettings) -> torch.Tensor:
        ...  # a one-line docstring naming the algorithm and paper, then the steps

and every user of :data:`SAMPLERS` (``generate_images``, the objective, the CLI's ``--sampler``
choices) sees it by name.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import torch

from skiptune.errors import SkiptuneError
from skiptune.registry import Registry
from skiptune.sampling.contract import DenoiserLike, NoiseFn, SamplerBody, SamplerFn
from skiptune.sampling.nfe import NFERule
from skiptune.sampling.settings import NoSettings


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: its public function, settings type and NFE rule."""

    name: str
    fn: SamplerFn
    settings_type: type
    nfe: NFERule

    @property
    def min_nfe(self) -> int:
        return self.nfe.min_nfe

    def nfe_for_steps(self, steps: int) -> int:
        return self.nfe.nfe_for_steps(steps)

    def steps_for_nfe(self, nfe: int) -> int:
        """Steps that spend exactly ``nfe`` evaluations; an error names the nearest valid NFEs."""
        return self.nfe.steps_for_nfe(nfe, sampler=self.name)

    def default_settings(self) -> Any:
        return self.settings_type()

    def check_settings(self, settings: object | None) -> Any:
        """``settings`` if it suits this sampler, defaults for ``None``, else a :class:`SkiptuneError`."""
        if settings is None:
            return self.settings_type()
        if not isinstance(settings, self.settings_type):
            kind = self.settings_type.__name__
            raise SkiptuneError(
                f"sampler {self.name!r} takes {kind}, got {type(settings).__name__}; "
                f"pass {kind}(...) or None for the defaults"
            )
        return settings

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


def register_sampler(
    name: str, *, nfe: NFERule, settings: type = NoSettings
) -> Callable[[SamplerBody], SamplerFn]:
    """Register the decorated sampler body as ``name``; returns the public :class:`SamplerFn`.

    The public function checks ``settings`` (``None``: the defaults; another type: a
    :class:`SkiptuneError`) and calls the body with them, so a body never checks its own settings.
    """
    if not (isinstance(settings, type) and is_dataclass(settings) and hasattr(settings, "to_dict")):
        raise TypeError(f"sampler {name!r}: settings must be a dataclass with to_dict(), got {settings!r}")
    settings_type = settings  # the public function's own ``settings`` argument shadows the name below

    def wrap(body: SamplerBody) -> SamplerFn:
        @functools.wraps(body)
        def sampler(
            denoiser: DenoiserLike,
            x: torch.Tensor,
            sigmas: torch.Tensor,
            *,
            class_labels: torch.Tensor | None = None,
            noise: NoiseFn | None = None,
            settings: object | None = None,
        ) -> torch.Tensor:
            checked = spec.check_settings(settings)
            return body(denoiser, x, sigmas, class_labels=class_labels, noise=noise, settings=checked)

        spec = SamplerSpec(name, sampler, settings_type, nfe)
        SAMPLERS.register(name, spec)
        return sampler

    return wrap
