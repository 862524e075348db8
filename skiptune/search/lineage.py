"""Re-running a trial whose worker died or gave it back: the copy, its place in the budget, its one winner.

A *copy* is a WAITING trial with the original's params and role, and three attributes: the number it
re-runs (``skiptune_rerun_of``), its *place* (``skiptune_place``: the number of the first trial of
its lineage) and the retries so far. The copy is enqueued *before* the original is failed, so at
every moment one of them counts against the budget, and it keeps the original's place: the budget
check (``budget.within_budget``) sees it where the original was, so trials created meanwhile never
push it out as over budget.

Only one process copies a trial: it first claims the re-run (``records.claim_rerun``, an atomic
insert), so two workers sweeping the same dead trial at once make one copy. Copy first, fail second
still leaves rare races, settled when a worker *takes* a copy (:func:`take`): the original may
finish after all (its worker was only paused, or its last commit did land), and a claimant that
died half-way may leave a copy behind. A copy is run only if its original is failed without an
evaluation of its own (by a sweep, or given back) and no copy of the same original has a smaller
number; otherwise it is failed as ``superseded`` (not counted) and nothing is evaluated.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from skiptune.search import records as rec

_log = logging.getLogger(__name__)

#: A re-run of a dead worker's trial may die too (a setting that crashes the driver): give up after this.
MAX_RETRIES = 3

_RERUNNABLE_KINDS = (None, rec.RELEASED)  # failed by a sweep (no kind) or given back by its worker


def place(trial: FrozenTrial) -> int:
    """The trial's place in its study's budget: its own number, or its lineage's first number."""
    return int(trial.user_attrs.get(rec.PLACE_ATTR, trial.number))


def enqueue_copy(study: optuna.Study, original: FrozenTrial, *, stale: bool) -> bool:
    """Enqueue a copy of ``original`` (which must not be failed yet); False if there is nothing to copy.

    ``stale``: its worker died (counts as a retry; after ``MAX_RETRIES`` the lineage ends).
    """
    params = rec.fixed_params(original)
    retries = int(original.user_attrs.get(rec.RETRIES_ATTR, 0)) + stale
    if not params or retries > MAX_RETRIES:
        return False
    attrs: dict[str, Any] = {k: v for k, v in original.user_attrs.items() if k == rec.ROLE_ATTR}
    attrs.update(
        {rec.RERUN_OF_ATTR: original.number, rec.PLACE_ATTR: place(original), rec.RETRIES_ATTR: retries}
    )
    if not stale:
        attrs[rec.RELEASED_FROM_ATTR] = original.number
    rec.enqueue(study, params, user_attrs=attrs)
    return True


def rerun_stale(study: optuna.Study, original: FrozenTrial, *, grace: float) -> bool:
    """Re-run a dead worker's RUNNING trial: claim, copy, then fail it; False if another process does
    it, or it finished meanwhile."""
    storage = rec.study_storage(study)
    if original.state != TrialState.RUNNING:
        return False
    if not rec.claim_rerun(storage, rec.trial_id(original), expire_s=grace):
        return False
    copied = enqueue_copy(study, original, stale=True)
    try:
        storage.set_trial_state_values(rec.trial_id(original), TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False  # it finished after all; the copy, if any, is superseded when taken
    _log.warning(
        "trial %d of %s: its worker stopped beating; %s",
        original.number,
        study.study_name,
        "re-enqueued" if copied else "failed (nothing to re-run: no params yet, or retried too often)",
    )
    return True


def take(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Whether the just-taken ``trial`` is to be evaluated: True for an ordinary trial or the winning
    copy; a redundant copy is failed as ``superseded`` here."""
    of = trial.user_attrs.get(rec.RERUN_OF_ATTR)  # as read when taken; a copy is born with it
    if of is None:
        return True
    storage = rec.study_storage(study)
    sid = rec.study_id(study)
    original = rec.trial_by_number(storage, sid, int(of))
    if original.state == TrialState.RUNNING:  # the copier has not failed it yet (or died before)
        with contextlib.suppress(UpdateFinishedTrialError):  # ended meanwhile: judged below
            storage.set_trial_state_values(rec.trial_id(original), TrialState.FAIL)
        original = storage.get_trial(rec.trial_id(original))
    kind = (original.user_attrs.get(rec.FAIL_ATTR) or {}).get("kind")
    rivals = [
        t.number
        for t in rec.fresh_trials(storage, sid)
        if t.user_attrs.get(rec.RERUN_OF_ATTR) == of and t.number < trial.number
    ]
    if original.state == TrialState.FAIL and kind in _RERUNNABLE_KINDS and not rivals:
        storage.set_trial_system_attr(rec.trial_id(trial), rec.FAILED_TRIAL, int(of))  # Optuna's convention
        return True
    why = f"copy {min(rivals)} runs it" if rivals else f"it ended {original.state.name} by itself"
    _log.info("trial %d re-runs trial %d, but %s: superseded", trial.number, int(of), why)
    trial.set_user_attr(rec.FAIL_ATTR, {"kind": rec.SUPERSEDED, "reason": why})
    storage.set_trial_state_values(rec.trial_id(trial), TrialState.FAIL)
    return False


def taken_over(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Whether the trial this worker holds was finished by someone else (a sweep failed it while this
    worker was paused or cut off): the worker then drops it. Logs the one line that says so."""
    state = rec.study_storage(study).get_trial(rec.trial_id(trial)).state
    if not state.is_finished():
        return False
    _log.warning(
        "trial %d of %s is already %s (recorded while this worker was paused or cut off%s): dropping it",
        trial.number,
        study.study_name,
        state.name,
        "; a re-run goes on elsewhere" if state == TrialState.FAIL else "",
    )
    return True


def release(study: optuna.Study, trial: optuna.Trial, why: str) -> bool:
    """Give the trial back: enqueue its copy first (never a moment with neither counted), then fail it
    as ``released`` (not counted). False if a sweep is re-running it already (this worker was paused
    past the grace period); raises ``UpdateFinishedTrialError`` if it had finished already."""
    storage = rec.study_storage(study)
    if not rec.claim_rerun(storage, rec.trial_id(trial), expire_s=float("inf")):
        return False
    frozen = storage.get_trial(rec.trial_id(trial))
    copied = enqueue_copy(study, frozen, stale=False)
    reason = f"{why}; params re-enqueued" if copied else why
    _log.info("trial %d given back: %s", trial.number, reason)
    trial.set_user_attr(rec.FAIL_ATTR, {"kind": rec.RELEASED, "reason": reason[:500]})
    rec.tell(study, trial, state=TrialState.FAIL)
    return True


@dataclass
class Held:
    """The trial a worker holds right now, so that the loop's storage boundary can give it back."""

    study: optuna.Study | None = None
    trial: optuna.Trial | None = None

    def hold(self, study: optuna.Study, trial: optuna.Trial) -> None:
        self.study, self.trial = study, trial

    def give_back(self, why: str) -> str | None:
        """Release the held trial after a storage failure: "released", "dropped" (someone else ended
        it meanwhile), or None when nothing was held. Safe to repeat."""
        study, trial = self.study, self.trial
        if study is None or trial is None:
            return None
        if taken_over(study, trial):
            return "dropped"
        try:
            if release(study, trial, why):
                return "released"
        except (UpdateFinishedTrialError, ValueError):
            if not taken_over(study, trial):
                raise
        return "dropped"  # ended elsewhere, or a sweep claimed it first and re-runs it
