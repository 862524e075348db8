"""The pair to analyse from a study: its recommended answer, with the status that qualifies it."""

from __future__ import annotations

from dataclasses import dataclass

from skiptune.errors import SkiptuneError
from skiptune.search.experiment.validation import NO_GAIN
from skiptune.search.query import BestCoefficients, best_coefficients, pick_study
from skiptune.skips import SkipSchedule
from skiptune.storage import open_storage


@dataclass(frozen=True)
class StudyPair:
    """The schedule taken from a study, its answer and the study's objective (extractor, reference)."""

    schedule: SkipSchedule
    answer: BestCoefficients
    extractor: str
    reference: str
    note: str


def study_pair(
    storage_url: str, model: str, nfe: int, sampler: str, *, study_name: str | None = None,
    search_best: bool = False,
) -> StudyPair:  # fmt: skip
    """The study's recommended pair (``search_best``: the search's own best candidate instead).

    A ``no-gain`` study recommends (1, 1), which has nothing to analyse: that is an error naming the
    way to analyse its best candidate anyway (``search_best``), which the user must ask for because
    the validation found it no better than the baseline.
    """
    storage = open_storage(storage_url)
    study = pick_study(storage, model, nfe, sampler, study_name)
    answer = best_coefficients(storage, model, nfe, sampler, study_name=study.name)
    objective = study.spec.objective
    if search_best:
        if not answer.search_best:
            raise SkiptuneError(f"study {study.name!r} has no complete search trial yet")
        pair = SkipSchedule(answer.search_best["rho_bottom"], answer.search_best["rho_top"])
        note = f"the search's best candidate of {study.name} (status {answer.status}; not the recommendation)"
    elif answer.status == NO_GAIN:
        raise SkiptuneError(
            f"study {study.name!r} is no-gain: its validated answer is (1, 1), the baseline itself; "
            "add --search-best to analyse its best candidate anyway"
        )
    else:
        pair = SkipSchedule(answer.rho_bottom, answer.rho_top, answer.sigma_window)
        note = f"the recommended pair of {study.name} (status {answer.status})"
    if pair.is_identity:
        raise SkiptuneError(f"{note} is (1, 1), the baseline itself; nothing to compare")
    return StudyPair(pair, answer, objective.extractor, objective.reference, note)
