"""The bridge to ``skiptune.objectives.fid.FDObjective``: study specs at creation, objectives in workers.

A study stores how to rebuild its objective (extractor name, reference path and the sha256 of its
statistics, sample count, rungs, seed base); a worker rebuilds it on its own device and refuses a
reference whose statistics differ from the ones the study was created with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from skiptune.bundled import NAMED_REFERENCES
from skiptune.errors import SkiptuneError
from skiptune.nets.registry import LoadedModel
from skiptune.objectives.features import create_extractor
from skiptune.objectives.fid import FDObjective
from skiptune.objectives.reference import ReferenceStats, load_reference, resolve_reference
from skiptune.sampling import SAMPLERS
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
) -> list[StudySpec]:
    """One spec per NFE; builds each objective once (on the CPU) to validate it and take its identity."""
    settings = SAMPLERS.get(sampler).settings_from_dict(sampler_settings or {})
    feature_extractor = create_extractor(extractor, device="cpu")
    reference = load_reference(reference_path)
    args = {
        "extractor": extractor,
        # a bundled reference is stored by name, resolved on each worker's machine
        "reference_path": (
            str(reference_path)
            if str(reference_path) in NAMED_REFERENCES
            else str(Path(reference_path).resolve())
        ),
        "reference_sha256": reference.sha256,
        "n_samples": n_samples,
        "rungs": list(rungs),
        "seed_base": seed_base,
    }
    specs = []
    for nfe in nfes:
        objective = FDObjective(
            denoiser=loaded.net, sampler=sampler, nfe=nfe, extractor=feature_extractor, reference=reference,
            n_samples=n_samples, rungs=rungs, sampler_settings=settings, seed_base=seed_base, progress=False,
        )  # fmt: skip
        specs.append(
            StudySpec(
                model=loaded.name,
                model_fingerprint=loaded.fingerprint,
                sampler=sampler,
                nfe=nfe,
                objective=objective.identity(),
                objective_args=args,
                sampler_settings=settings.to_dict(),
                space=space or SearchSpace(),
                n_trials=n_trials,
                search=search,
            )
        )
    return specs


def _checked_reference(spec: StudySpec) -> ReferenceStats:
    args = spec.objective_args
    path, expected = resolve_reference(args["reference_path"]), args["reference_sha256"]
    if not path.is_file():
        raise SkiptuneError(
            f"study {spec.name!r} needs reference statistics {str(path)!r} (sha256 {expected[:12]}...), "
            "which this machine does not have; copy the same file to that path"
        )
    reference = load_reference(path)
    if reference.sha256 != expected:
        raise SkiptuneError(
            f"refusing to work on study {spec.name!r}: reference {str(path)!r} here has statistics sha256 "
            f"{reference.sha256[:12]}..., the study was created with {expected[:12]}...; "
            "copy the study's file"
        )
    return reference


def build_objective(
    net: torch.nn.Module, spec: StudySpec, *, device: torch.device, batch_size: int
) -> FDObjective:
    """The study's objective, rebuilt here on ``device`` (the worker checks its identity afterwards)."""
    args = spec.objective_args
    return FDObjective(
        denoiser=net,
        sampler=spec.sampler,
        nfe=spec.nfe,
        extractor=create_extractor(args["extractor"], device=device),
        reference=_checked_reference(spec),
        n_samples=int(args["n_samples"]),
        rungs=[int(r) for r in args["rungs"]],
        sampler_settings=SAMPLERS.get(spec.sampler).settings_from_dict(spec.sampler_settings),
        seed_base=int(args["seed_base"]),
        batch_size=batch_size,
        device=device,
        progress=False,
    )
