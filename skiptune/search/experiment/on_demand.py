"""Validation on demand: record a study's validation settings and enqueue a round for its current top-K."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import optuna

from skiptune.errors import SkiptuneError
from skiptune.search import records as rec
from skiptune.search.experiment.state import create_round, load_experiment, pending_candidates
from skiptune.search.settings import ValidationSettings
from skiptune.search.study import StoredStudy


def search_seeds(study: StoredStudy) -> tuple[int, int]:
    """(seed base, sample count) of the study's search trials."""
    return study.spec.objective.seed_base, study.spec.objective.n_samples


def request_validation(
    storage: optuna.storages.BaseStorage, study: StoredStudy, wanted: ValidationSettings
) -> dict[str, Any]:
    """Write the settings (refusing a change once a round exists), then enqueue the pending candidates."""
    wanted.check_disjoint(search_seeds(study)[0], search_seeds(study)[1])
    exp = load_experiment(storage, study)
    if exp.settings is not None:  # the CLIP guard is the study's, set at creation (`validate` keeps it)
        wanted = replace(wanted, clip_guard=exp.settings.clip_guard, clip_sha256=exp.settings.clip_sha256)
    if exp.settings is not None and exp.rounds and _fixed(exp.settings) != _fixed(wanted):
        raise SkiptuneError(
            f"study {study.name!r} was validated with {exp.settings.to_dict()}; held-out results must be "
            "paired on the same seeds, so these settings are fixed: repeat the command without "
            "--validate-* options, or create a new study"
        )
    if exp.settings is None or not exp.rounds:
        storage.set_study_user_attr(study.study_id, rec.VALIDATION_ATTR, wanted.to_dict())
        exp = load_experiment(storage, study)
    pending = pending_candidates(exp)
    name = create_round(storage, exp, pending) if pending else None
    return {
        "study": study.name,
        "round": name,
        "enqueued": pending if name else [],
        "settings": exp.settings.to_dict() if exp.settings else None,
        "status": load_experiment(storage, study).status(),
    }


def _fixed(settings: ValidationSettings) -> dict[str, Any]:
    """The settings a round fixes; the later stages' (calibration, window, refinement) keep the stored
    values (a study validated before they existed keeps its behaviour)."""
    later = ("calibration", "window_trials", "window_candidates", "refine_trials", "refine_radius",
             "refine_shape")  # fmt: skip
    return {k: v for k, v in settings.to_dict().items() if k not in later}
