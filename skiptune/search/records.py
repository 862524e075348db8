"""What skiptune records in Optuna's schema, and the only code that touches Optuna's private attributes.

The database is Optuna's RDB schema, unmodified; skiptune's own facts live in study and trial user
attributes whose keys all start with ``skiptune_`` and are listed here. A skiptune *experiment* is one
main study (named by its identity, see ``study.py``) plus companion studies named ``{main}/{suffix}``:

* ``{main}/grow{p}`` (p = 1, 2, ...): a search phase over a grown box (attributes: parent, kind, phase,
  space, budget); the main study is phase 0;
* ``{main}/validate{r}`` (r = 0, 1, ...): a validation round, one enqueued trial (job) per candidate.

Companions carry no identity attribute, so ``find_studies`` never mistakes them for experiments, and
optuna-dashboard shows them as ordinary studies.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import optuna
from optuna.storages._cached_storage import _CachedStorage
from optuna.trial import FrozenTrial, TrialState

# ---- study attributes of a main study
IDENTITY_ATTR = "skiptune_identity"
OBJECTIVE_ARGS_ATTR = "skiptune_objective_args"
BUDGET_ATTR = "skiptune_budget"
SEARCH_ATTR = "skiptune_search"
VALIDATION_ATTR = "skiptune_validation"  # ValidationSettings.to_dict(); absent: validation off (old studies)

# ---- study attributes of a companion study
PARENT_ATTR = "skiptune_parent"  # the main study's name
KIND_ATTR = "skiptune_kind"  # GROW or VALIDATION
PHASE_ATTR = "skiptune_phase"  # grow phase p / validation round r
SPACE_ATTR = "skiptune_space"  # a grow phase's SearchSpace.to_dict()
PHASE_BUDGET_ATTR = "skiptune_budget"  # a grow phase's trial budget
GROW = "grow"
VALIDATION = "validation"

# ---- trial attributes
ROLE_ATTR = "skiptune_role"  # baseline / warm_start / prior (copied into a grow phase) / candidate
WARM_FROM_ATTR = "skiptune_warm_from"
RELEASED_FROM_ATTR = "skiptune_released_from"
WORKER_ATTR = "skiptune_worker"  # host:pid:index of the evaluating worker
PRECISION_ATTR = "skiptune_precision"  # fp32 / bf16 / fp16: what the evaluating worker sampled in
FAIL_ATTR = "skiptune_fail"  # {"kind": ..., "reason": ...} when skiptune failed the trial
HOLDOUT_ATTR = "skiptune_holdout"  # a validation job's BlockDistances.to_dict()
BASELINE = "baseline"
WARM_START = "warm_start"
PRIOR = "prior"
CANDIDATE = "candidate"

# ---- fail kinds; only an evaluation failure counts against a budget
EVALUATION_FAILED = "evaluation"
OVER_BUDGET = "over_budget"
RELEASED = "released"


def companion_name(main: str, kind: str, index: int) -> str:
    return f"{main}/{'grow' if kind == GROW else 'validate'}{index}"


def study_id(study: optuna.Study) -> int:
    return study._study_id


def study_storage(study: optuna.Study) -> optuna.storages.BaseStorage:
    return study._storage


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    return trial._trial_id


def fresh_trials(storage: optuna.storages.BaseStorage, sid: int) -> list[FrozenTrial]:
    """All trials as the database holds them now.

    A finished trial never changes again (Optuna refuses every update to it), so on an RDB storage
    finished trials are read once per process and kept: each call reads only the trials that were
    unfinished at the last call and the ones created since (Optuna's ``_CachedStorage`` read path).
    Without this a worker re-read every trial of every study at each turn of its loop, which made the
    database time per trial grow with the number of trials (benchmarks/service_scaling.py).
    """
    return _reader(storage).get_all_trials(sid, deepcopy=False)


_readers: weakref.WeakKeyDictionary[optuna.storages.RDBStorage, _CachedStorage] = weakref.WeakKeyDictionary()
_readers_lock = threading.Lock()


def _reader(storage: optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    if isinstance(storage, _CachedStorage) or not isinstance(storage, optuna.storages.RDBStorage):
        return storage  # already cached (a study's storage), or no SQL behind it (in-memory, gRPC proxy)
    with _readers_lock:
        reader = _readers.get(storage)
        if reader is None:
            reader = _readers[storage] = _CachedStorage(storage)
        return reader


def pop_waiting(study: optuna.Study) -> optuna.Trial | None:
    """Take one WAITING trial of ``study`` (RUNNING from now on), or None if there is none.

    Unlike ``study.ask()`` this never creates a new trial: a validation job is run only if it was
    enqueued. Taking is atomic in the storage (the state changes only from WAITING), so each enqueued
    trial is taken by exactly one worker however many race for it.
    """
    storage = study_storage(study)
    for frozen in storage.get_all_trials(study_id(study), deepcopy=False, states=(TrialState.WAITING,)):
        if storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
            return optuna.Trial(study, frozen._trial_id)
    return None


def fixed_params(frozen: FrozenTrial) -> dict[str, Any]:
    """The params a trial evaluates: those it was enqueued with (complete from the start), else those
    suggested so far (a worker records them one at a time, so they may still be partial)."""
    return dict(frozen.system_attrs.get("fixed_params") or {}) or dict(frozen.params)
