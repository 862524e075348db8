"""One precision per study: the first trial's precision is the study's, and other workers must match.

Sample i's network inputs are a pure function of its seed, but the network's arithmetic is not the
same in bf16 and fp32: the GPU fast path moved the demo's distance by 0.37% against fp32 on the same
seeds (docs/results.md), a third to a half of one estimate's seed spread, which is not far below the
differences the search compares trials by. So the trials of one study are all evaluated in one precision:
the one its first evaluated trial recorded (``skiptune_precision``), or, before any trial recorded one,
the one the first worker to start on the study claimed (a study system attribute, inserted atomically:
of two workers starting at the same instant in different precisions, one is refused).
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial

from skiptune.errors import SkiptuneError
from skiptune.search.records import PRECISION_ATTR, PRECISION_PIN_ATTR, claim_study_attr, fresh_trials
from skiptune.search.study import StoredStudy


def study_precision(storage: optuna.storages.BaseStorage, study_id: int) -> tuple[int, str] | None:
    """(number, precision) of the study's first trial that records a precision; None before any."""
    return recorded_precision(fresh_trials(storage, study_id))


def recorded_precision(trials: list[FrozenTrial]) -> tuple[int, str] | None:
    """(number, precision) of the first of ``trials`` that records a precision; None before any."""
    for frozen in sorted(trials, key=lambda t: t.number):
        precision = frozen.user_attrs.get(PRECISION_ATTR)
        if precision is not None:
            return frozen.number, str(precision)
    return None


def check_precision(storage: optuna.storages.BaseStorage, study: StoredStudy, precision: str) -> None:
    """Refuse, in one line naming the ``--precision`` to pass, a study pinned to another precision."""
    pinned = study_precision(storage, study.study_id)
    if pinned is None:  # no trial recorded one yet: the first worker's claim decides
        theirs = str(claim_study_attr(storage, study.study_id, PRECISION_PIN_ATTR, precision))
        pinned_by = "claimed by the first worker to start on it"
    else:
        theirs, pinned_by = pinned[1], f"pinned by trial {pinned[0]}, its first"
    if theirs != precision:
        raise SkiptuneError(
            f"refusing to work on study {study.name!r}: its trials run in {theirs} ({pinned_by}) but "
            f"this worker runs {precision}; start the worker with --precision {theirs} (or create a new "
            f"study for {precision})"
        )
