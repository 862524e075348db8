"""What skiptune records in Optuna's schema; the only code that touches Optuna's private attributes but for
Optuna's tables read as rows (``storage/trial_rows.py``) and the proxy's two sides (``storage/proxy_*.py``).

The database is Optuna's RDB schema, unmodified; skiptune's own facts live in study and trial user
attributes whose keys all start with ``skiptune_`` and are listed here. A skiptune *experiment* is one
main study (named by its identity, see ``study.py``) plus companion studies named ``{main}/{suffix}``:

* ``{main}/grow{p}`` (p = 1, 2, ...): a search phase over a grown box (attributes: parent, kind, phase,
  space, budget); the main study is phase 0;
* ``{main}/validate{r}`` (r = 0, 1, ...): a validation round, one enqueued trial (job) per candidate;
* ``{main}/refine{p}``: a search phase in a small box around the answer (as a grow phase);
* ``{main}/window{w}`` (w = 0, 1, ...): the window stage's screen of sigma windows of the answer's pair
  on the search seeds, one enqueued trial per window (attributes as a grow phase's).

Companions carry no identity attribute, so ``find_studies`` never mistakes them for experiments, and
optuna-dashboard shows them as ordinary studies.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
import weakref
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.exc
import sqlalchemy.orm
from optuna.trial import FrozenTrial, TrialState, create_trial

from skiptune.storage.proxy_client import BEAT_ATTR, FleetProxy  # BEAT_ATTR: the heartbeat behind the proxy

# ---- study attributes of a main study
IDENTITY_ATTR = "skiptune_identity"
OBJECTIVE_ARGS_ATTR = "skiptune_objective_args"
BUDGET_ATTR = "skiptune_budget"
SEARCH_ATTR = "skiptune_search"
VALIDATION_ATTR = "skiptune_validation"  # ValidationSettings.to_dict(); absent: validation off (old studies)
SEED_ATTR = "skiptune_seed"  # the search's seed (study create --seed); workers seed their samplers from it

# ---- study attributes of a companion study
PARENT_ATTR = "skiptune_parent"  # the main study's name
KIND_ATTR = "skiptune_kind"  # GROW, REFINE, WINDOW or VALIDATION
PHASE_ATTR = "skiptune_phase"  # grow/refine phase p / window screen w / validation round r
SPACE_ATTR = "skiptune_space"  # a grow/refine/window phase's SearchSpace.to_dict()
PHASE_BUDGET_ATTR = "skiptune_budget"  # a grow/refine/window phase's trial budget
SAMPLER_SIGMAS_ATTR = "skiptune_sampler_sigmas"  # main study: the levels the sampler evaluates the net at
GROW = "grow"
REFINE = "refine"
WINDOW = "window"
VALIDATION = "validation"
COMPANION_PREFIX = {GROW: "grow", REFINE: "refine", WINDOW: "window", VALIDATION: "validate"}
_SUFFIXES = COMPANION_PREFIX  # companion kind -> name suffix before its index

# ---- trial attributes
ROLE_ATTR = "skiptune_role"  # baseline / warm_start / prior (copied into a grow phase) / candidate
WARM_FROM_ATTR = "skiptune_warm_from"
RELEASED_FROM_ATTR = "skiptune_released_from"
RERUN_OF_ATTR = "skiptune_rerun_of"  # number of the trial this copy re-runs (its worker died or gave it back)
PLACE_ATTR = "skiptune_place"  # a copy's place in the budget: the number of the first trial of its lineage
RETRIES_ATTR = "skiptune_retries"  # how many times the lineage's worker died (stale re-runs so far)
WORKER_ATTR = "skiptune_worker"  # host:pid:index of the evaluating worker
PRECISION_ATTR = "skiptune_precision"  # fp32 / bf16 / fp16: what the evaluating worker sampled in
PRECISION_PIN_ATTR = "skiptune_precision_pin"  # study system attr: the precision claimed by its first worker
FAIL_ATTR = "skiptune_fail"  # {"kind": ..., "reason": ...} when skiptune failed the trial
HOLDOUT_ATTR = "skiptune_holdout"  # a validation job's BlockDistances.to_dict()
BASELINE = "baseline"
WARM_START = "warm_start"
PRIOR = "prior"
CANDIDATE = "candidate"
WINDOW_CANDIDATE = "window"  # a job of the window stage: the answer's pair in a sigma window

# ---- fail kinds; only an evaluation failure counts against a budget
EVALUATION_FAILED = "evaluation"
OVER_BUDGET = "over_budget"
RELEASED = "released"
SUPERSEDED = "superseded"  # a copy made redundant (its original finished after all, or another copy won)

# ---- Optuna's own attribute names that skiptune writes too
FIXED_PARAMS = "fixed_params"  # system attr of an enqueued trial (``Study.enqueue_trial``)
FAILED_TRIAL = "failed_trial"  # system attr of a re-run (as ``RetryHeartbeatStaleTrialCallback`` writes it)
CLAIM_ATTR = "skiptune_rerun_claim"  # system attr: who re-runs this trial ({"by": token, "at": unix time})




def companion_name(main: str, kind: str, index: int) -> str:
    return f"{main}/{_SUFFIXES[kind]}{index}"


def is_companion(main: str, name: str) -> bool:
    """Whether study ``name`` belongs to the experiment of main study ``main`` (the one place that knows
    a companion's name is ``{main}/...``; ``parse_companion`` says which one it is)."""
    return name.startswith(main + "/")


def parse_companion(main: str, name: str) -> tuple[str, int] | None:
    """``(kind, index)`` of companion ``name`` of ``main``, or None where the name is not one."""
    if not is_companion(main, name):
        return None
    suffix = name[len(main) + 1 :]
    for kind, word in _SUFFIXES.items():
        digits = suffix[len(word) :]
        if suffix.startswith(word) and digits.isdigit():
            return kind, int(digits)
    return None


def study_id(study: optuna.Study) -> int:
    return study._study_id


def study_storage(study: optuna.Study) -> optuna.storages.BaseStorage:
    return study._storage


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    return trial._trial_id


def fresh_trials(storage: optuna.storages.BaseStorage, sid: int) -> list[FrozenTrial]:
    """All trials of study ``sid`` as the database holds them now (``read_many`` for one study).

    A finished trial never changes again (Optuna refuses every update to it), so on an RDB storage
    finished trials are read once per process and kept: each call reads only the trials that were
    unfinished at the last call and the ones created since. Without this a worker re-read every trial
    of every study at each turn of its loop, which made the database time per trial grow with the
    number of trials (benchmarks/service_scaling.py). A study that does not exist raises ``KeyError``.
    """
    trials = read_many(storage, [sid])[sid]
    if not trials:
        storage.get_study_name_from_id(sid)  # KeyError for an unknown study, as Optuna's own read
    return trials


_readers_lock = threading.Lock()


def read_many(storage: optuna.storages.BaseStorage, sids: list[int]) -> dict[int, list[FrozenTrial]]:
    """``{sid: trials}`` for many studies at once: on an RDB storage one query (and one load per trial
    table) reads the unfinished and new trials of all of them, where Optuna's own read costs seven
    statements per study; finished trials come from this process's one cache (``_TrialCache``). The
    worker's loop reads every study it serves at each turn, so this is most of its reading
    (benchmarks/service_scaling.py). Through the gRPC proxy it is one call for all of them
    (``FleetProxy.read_many``); other storages (in-memory) are read study by study."""
    if isinstance(storage, FleetProxy):
        return storage.read_many(sids)
    backend = _rdb(storage)
    cache = _many_readers.get(backend) if backend is not None else None
    if backend is not None and cache is None:
        with _readers_lock:
            cache = _many_readers.setdefault(backend, _TrialCache(backend))
    if cache is None:
        return {sid: storage.get_all_trials(sid, deepcopy=False) for sid in sids}
    return cache.refresh(sids)


class _TrialCache:
    """The trials of many studies by study: finished ones read once (Optuna never changes them again),
    unfinished ones read again at each refresh, as in Optuna's ``_CachedStorage``."""

    def __init__(self, backend: optuna.storages.RDBStorage) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        self._trials: dict[int, dict[int, FrozenTrial]] = {}  # study id -> trial id -> trial
        self._unfinished: dict[int, set[int]] = {}
        self._last_finished: dict[int, int] = {}

    def refresh(self, sids: list[int]) -> dict[int, list[FrozenTrial]]:
        from skiptune.storage.trial_rows import read_changed  # Optuna's schema: imported when first read

        with self._lock:
            wanted = {}
            for sid in sids:
                self._trials.setdefault(sid, {})
                unfinished = self._unfinished.setdefault(sid, set())
                wanted[sid] = (unfinished, self._last_finished.setdefault(sid, -1))
            for owner, frozen in read_changed(self._backend, wanted, check=False):
                self._keep(owner, frozen)
            return {sid: sorted(self._trials[sid].values(), key=lambda t: t.number) for sid in sids}

    def _keep(self, sid: int, frozen: FrozenTrial) -> None:
        tid = frozen._trial_id
        self._trials.setdefault(sid, {})[tid] = frozen
        if frozen.state.is_finished():
            self._unfinished[sid].discard(tid)
            self._last_finished[sid] = max(self._last_finished[sid], tid)
        else:
            self._unfinished[sid].add(tid)


_many_readers: weakref.WeakKeyDictionary[optuna.storages.RDBStorage, _TrialCache]
_many_readers = weakref.WeakKeyDictionary()


def ask(study: optuna.Study, *, waiting: bool) -> optuna.Trial:
    """``study.ask()``: take a WAITING trial if there is one, else create a new one.

    ``waiting``: whether the caller's read of the study, a moment ago, showed a WAITING trial. Optuna's
    ``ask`` reads every unfinished trial to look for one (seven statements); without one to expect,
    this creates the trial straight away. A trial enqueued in that moment is taken by a later ask.
    """
    trial = pop_waiting(study) if waiting else None
    if trial is None:
        study._thread_local.cached_all_trials = None  # what ``ask`` does: samplers read afresh
        trial = optuna.Trial(study, study_storage(study).create_new_trial(study_id(study)))
    return trial


def ask_time_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's trials, read at the first call after ``ask`` and kept for the rest of the trial's
    suggestions: Optuna's samplers read the study once per trial through this cache (TPE's
    ``use_cache``), so the budget check right after ``ask`` and TPE share one read."""
    return study._get_trials(deepcopy=False, use_cache=True)


def tell(
    study: optuna.Study, trial: optuna.Trial, value: float | None = None, *, state: TrialState | None = None
) -> None:
    """``study.tell`` without its last step, a read of the trial for a copy to return that skiptune never
    uses (one storage call per trial: a gRPC call and six statements on the proxy)."""
    from optuna.study._tell import _tell_with_warning

    _tell_with_warning(study=study, trial=trial, value_or_values=value, state=state)


def pop_waiting(study: optuna.Study) -> optuna.Trial | None:
    """Take one WAITING trial of ``study`` (RUNNING from now on), or None if there is none.

    Unlike ``study.ask()`` this never creates a new trial: a validation job is run only if it was
    enqueued. Taking is atomic in the storage (the state changes only from WAITING), so each enqueued
    trial is taken by exactly one worker however many race for it.
    """
    storage = study_storage(study)
    for frozen in storage.get_all_trials(study_id(study), deepcopy=False, states=(TrialState.WAITING,)):
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # ended meanwhile
            if storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                study._thread_local.cached_all_trials = None
                return optuna.Trial(study, frozen._trial_id)
    return None


def fixed_params(frozen: FrozenTrial) -> dict[str, Any]:
    """The params a trial evaluates: those it was enqueued with (complete from the start), else those
    suggested so far (a worker records them one at a time, so they may still be partial)."""
    return dict(frozen.system_attrs.get(FIXED_PARAMS) or {}) or dict(frozen.params)


def enqueue(study: optuna.Study, params: dict[str, Any], *, user_attrs: dict[str, Any]) -> None:
    """``study.enqueue_trial`` (a WAITING trial with fixed params), without its duplicate check."""
    study.add_trial(
        create_trial(state=TrialState.WAITING, system_attrs={FIXED_PARAMS: params}, user_attrs=user_attrs)
    )


def trial_by_number(storage: optuna.storages.BaseStorage, sid: int, number: int) -> FrozenTrial:
    return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(sid, number))


_TOKEN = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _rdb(storage: optuna.storages.BaseStorage) -> optuna.storages.RDBStorage | None:
    storage = getattr(storage, "_backend", storage)  # a Study's storage wraps the RDB one in a cache
    return storage if isinstance(storage, optuna.storages.RDBStorage) else None


def claim_rerun(storage: optuna.storages.BaseStorage, trial_id: int, *, expire_s: float) -> bool:
    """Atomically become the one process that re-runs trial ``trial_id`` (copies and fails it).

    The claim is a system attribute inserted once (the schema makes (trial, key) unique, so of two
    racing inserts one fails). A claim older than ``expire_s`` (its claimant died half-way) is taken
    over by a compare-and-set update. True for storages without the schema (nothing to race on).
    """
    backend = _rdb(storage)
    if backend is None:
        return True
    from optuna.storages._rdb.models import TrialSystemAttributeModel as Attr

    mine = json.dumps({"by": _TOKEN, "at": time.time()})
    session = backend.scoped_session()
    try:
        session.add(Attr(trial_id=trial_id, key=CLAIM_ATTR, value_json=mine))
        session.commit()
        return True
    except sqlalchemy.exc.IntegrityError:
        session.rollback()
    try:
        query = session.query(Attr).filter(Attr.trial_id == trial_id, Attr.key == CLAIM_ATTR)
        theirs = str(query.one().value_json)
        claim = json.loads(theirs)
        if claim["by"] == _TOKEN:  # ours, from an attempt cut off half-way
            session.commit()
            return True
        if time.time() - float(claim["at"]) < expire_s:
            session.commit()
            return False
        won = query.filter(Attr.value_json == theirs).update({"value_json": mine}) == 1
        session.commit()
        return won
    except BaseException:
        session.rollback()
        raise


def claim_study_attr(storage: optuna.storages.BaseStorage, sid: int, key: str, value: Any) -> Any:
    """Set a study system attribute only if it is not set yet, atomically; return its value (ours if
    this call set it, the first writer's otherwise). The schema makes (study, key) unique, so of two
    racing inserts one fails. Without the schema (the gRPC proxy) it is a plain read, then a write."""
    backend = _rdb(storage)
    if backend is None:
        theirs = storage.get_study_system_attrs(sid).get(key)
        if theirs is None:
            storage.set_study_system_attr(sid, key, value)
        return value if theirs is None else theirs
    from optuna.storages._rdb.models import StudySystemAttributeModel as Attr

    session = backend.scoped_session()
    try:
        session.add(Attr(study_id=sid, key=key, value_json=json.dumps(value)))
        session.commit()
        return value
    except sqlalchemy.exc.IntegrityError:
        session.rollback()
    try:
        stored = session.query(Attr.value_json).filter(Attr.study_id == sid, Attr.key == key).scalar()
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return json.loads(str(stored))


def reset_session(storage: optuna.storages.BaseStorage) -> None:
    """Drop the calling thread's session: after a cut connection Optuna's read paths may leave it
    needing a rollback ("Can't reconnect until invalid transaction is rolled back")."""
    backend = _rdb(storage)
    if backend is not None:
        with contextlib.suppress(Exception):  # closing over a dead connection may itself fail
            backend.scoped_session.remove()


def running_liveness(storage: optuna.storages.BaseStorage, sid: int) -> list[tuple[int, float | None, Any]]:
    """(trial id, heartbeat age, beat mark) of every RUNNING trial.

    On an RDB storage the age is the seconds since its last heartbeat (None if it never beat) and
    the mark None. Behind the gRPC proxy, which carries no heartbeat table, the age is None and the
    mark is the trial's beat counter (``BEAT_ATTR``; None if it never beat): the caller judges how
    long it has seen it unchanged.
    """
    if _rdb(storage) is None:
        running = storage.get_all_trials(sid, deepcopy=False, states=(TrialState.RUNNING,))
        return [(t._trial_id, None, t.system_attrs.get(BEAT_ATTR)) for t in running]
    return [(tid, age, None) for tid, age in running_heartbeats(storage, sid)]


def running_heartbeats(storage: optuna.storages.BaseStorage, sid: int) -> list[tuple[int, float | None]]:
    """(trial id, seconds since its last heartbeat, or None if it never beat) of every RUNNING trial.

    Ages are measured on the database's clock (the one that stamped the beats), so workers' clocks
    may disagree. Empty for storages without a heartbeat table (the gRPC proxy).
    """
    backend = _rdb(storage)
    if backend is None:
        return []
    from optuna.storages._rdb import models

    session = backend.scoped_session()
    try:
        now = session.execute(sqlalchemy.func.now()).scalar()
        rows = (
            session.query(models.TrialModel.trial_id, models.TrialHeartbeatModel.heartbeat)
            .outerjoin(
                models.TrialHeartbeatModel, models.TrialHeartbeatModel.trial_id == models.TrialModel.trial_id
            )
            .filter(models.TrialModel.study_id == sid, models.TrialModel.state == TrialState.RUNNING)
            .all()
        )
        session.commit()
    except BaseException:
        session.rollback()
        raise
    assert now is not None
    now = now.replace(tzinfo=None)  # PostgreSQL returns an aware time, the column holds naive ones
    return [
        (tid, None if beat is None else (now - beat.replace(tzinfo=None)).total_seconds())
        for tid, beat in rows
    ]
