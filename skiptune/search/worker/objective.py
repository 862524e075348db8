"""The bridge to ``skiptune.objectives``: study specs at creation, objectives in workers.

A study holds its ``ObjectiveSpec`` (extractor name, reference path and the sha256 of its statistics,
sample count, rungs, seed base); a worker rebuilds the objective from it on its own device and refuses
a reference whose statistics differ from the ones the study was created with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from skiptune.errors import SkiptuneError
from skiptune.nets.base import supports_sigma_window
from skiptune.nets.registry import LoadedModel
from skiptune.objectives.features import create_extractor
from skiptune.objectives.fid import FDObjective
from skiptune.objectives.reference import load_reference
from skiptune.objectives.spec import ObjectiveSpec
from skiptune.plugins import REFERENCES
from skiptune.sampling import SAMPLERS
from skiptune.sampling.conditions import Conditioning, check_conditioning
from skiptune.sampling.levels import evaluated_sigmas
from skiptune.search.space import SearchSpace
from skiptune.search.study import StudySpec


def study_specs(
    loaded: LoadedModel,
    *,
    sampler: str,
    nfes: Sequence[int],
    extractor: str,
    reference_path: Path,
    n_samples: int,
    rungs: Sequence[int],
    seed_base: int = 0,
    sampler_settings: dict[str, Any] | None = None,
    space: SearchSpace | None = None,
    n_trials: int = 30,
    search: str = "tpe",
    conditioning: Conditioning | None = None,
) -> list[StudySpec]:
    """One spec per NFE; builds each objective once (on the CPU) to validate it. ``conditioning``: the
    prompts and guidance of a text-conditional model (refused for any other)."""
    check_conditioning(loaded.net, conditioning)
    if space is not None and space.sigma_window is not None and not supports_sigma_window(loaded.net):
        raise SkiptuneError(
            f"model {loaded.name!r} ({type(loaded.net).__name__}) cannot restrict Skip-Tuning to a sigma "
            "window; drop --sigma-window-range (windows work on EDM/EDM2/VP/VE networks)"
        )
    settings = SAMPLERS.get(sampler).settings_from_dict(sampler_settings or {})
    feature_extractor = create_extractor(extractor, device="cpu")
    reference = load_reference(reference_path)
    objective = ObjectiveSpec.describe(
        feature_extractor,
        reference,
        # a registered reference is stored by name, resolved on each worker's machine
        reference_name=(
            str(reference_path)
            if str(reference_path) in REFERENCES
            else str(Path(reference_path).resolve())
        ),
        n_samples=n_samples,
        rungs=rungs,
        seed_base=seed_base,
        conditioning=conditioning,
    )
    specs = []
    for nfe in nfes:  # built to validate NFE, settings and image sizes up front, then dropped
        FDObjective(
            spec=objective, denoiser=loaded.net, sampler=sampler, nfe=nfe, extractor=feature_extractor,
            reference=reference, sampler_settings=settings, progress=False,
        )  # fmt: skip
        specs.append(
            StudySpec(
                sampler_sigmas=tuple(evaluated_sigmas(loaded.net, sampler, nfe)),
                model=loaded.name,
                model_fingerprint=loaded.fingerprint,
                sampler=sampler,
                nfe=nfe,
                objective=objective,
                sampler_settings=settings.to_dict(),
                space=space or SearchSpace(),
                n_trials=n_trials,
                search=search,
            )
        )
    return specs


def build_objective(
    net: torch.nn.Module, spec: StudySpec, *, device: torch.device, batch_size: int
) -> FDObjective:
    """The study's objective, rebuilt here on ``device`` (the worker checks its identity afterwards)."""
    try:
        return FDObjective.from_spec(
            spec.objective,
            net,
            sampler=spec.sampler,
            nfe=spec.nfe,
            settings=spec.sampler_settings,
            device=device,
            batch_size=batch_size,
        )
    except SkiptuneError as exc:
        raise SkiptuneError(f"refusing to work on study {spec.name!r}: {exc}") from None
