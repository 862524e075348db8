"""The trial reads of ``skiptune proxy``: many studies in one call, one query for all of them.

Optuna's proxy answers a client's ``GetTrials`` (the unfinished and new trials of one study, the rule
of Optuna's client cache) from its ``_CachedStorage``: under one lock for every call of every thread,
it reads the study's unfinished and new trials from the database (seven statements), then sorts and
filters the study's whole list. A worker's loop reads every study it serves at each turn, one call
each, and these reads were most of the proxy's CPU (benchmarks/service_scaling.py). Here:

* ``GetTrials`` is read straight from the database with the client's own filter (``trial_rows.read_changed``),
  without the cache's lock and without touching the trials the client already holds;
* ``/skiptune.TrialReads/GetManyTrials`` answers the ``GetTrials`` of many studies in one call and one
  query (six statements for all of them). Its messages are Optuna's: the request is a protobuf
  message whose field 1 repeats ``GetTrialsRequest``, the reply one whose field 1 repeats
  ``GetTrialsReply`` in the same order (``pack``/``unpack``). A proxy without it (Optuna's own) answers
  UNIMPLEMENTED and the client reads study by study.

Every trial read is still registered in the ``_CachedStorage`` (trial id -> study and number), which
its writes (``set_trial_param``) need for a trial that this process did not create; a trial written
before this process read it (a proxy restarted under a worker) is read and registered first.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
import optuna
from optuna.storages._grpc import servicer as _optuna_servicer  # private: the service Optuna serves
from optuna.storages._grpc.auto_generated import api_pb2
from optuna.trial import FrozenTrial

SERVICE = "skiptune.TrialReads"
METHOD = "GetManyTrials"
PATH = f"/{SERVICE}/{METHOD}"
_TAG = b"\x0a"  # field 1, length-delimited


def pack(messages: list[bytes]) -> bytes:
    """Serialized messages as one message that repeats them in field 1."""
    return b"".join(_TAG + _varint(len(m)) + m for m in messages)


def unpack(data: bytes) -> list[bytes]:
    """The messages of ``pack``; ``ValueError`` on anything else."""
    out, i = [], 0
    while i < len(data):
        if data[i : i + 1] != _TAG:
            raise ValueError(f"not a packed message list (byte {i})")
        size, i = _read_varint(data, i + 1)
        if i + size > len(data):
            raise ValueError("a packed message list cut short")
        out.append(data[i : i + size])
        i += size
    return out


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    n, shift = 0, 0
    while i < len(data):
        byte = data[i]
        n |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return n, i
        shift += 7
    raise ValueError("a packed message list cut short")


class FleetStorageService(_optuna_servicer.OptunaStorageProxyService):
    """Optuna's service with ``GetTrials`` read straight from the database, and ``GetManyTrials``."""

    def __init__(self, storage: optuna.storages.BaseStorage) -> None:
        super().__init__(storage)
        backend = getattr(storage, "_backend", storage)  # Optuna's _CachedStorage wraps the RDB one
        self._rdb = backend if isinstance(backend, optuna.storages.RDBStorage) else None

    def GetTrials(self, request: Any, context: Any) -> Any:  # gRPC's method name
        if self._rdb is None:
            return super().GetTrials(request, context)
        return self._replies([request], context)[0]

    def SetTrialParameter(self, request: Any, context: Any) -> Any:  # gRPC's method name
        self._know(request.trial_id)
        return super().SetTrialParameter(request, context)

    def _know(self, trial_id: int) -> None:
        """Register a trial this process has neither created nor read (a proxy restarted while a worker
        held it, or another process of ``--processes`` served its reads): ``_CachedStorage``'s
        ``set_trial_param`` looks the trial up in its own maps and raises ``KeyError`` otherwise."""
        known: Any = getattr(self._backend, "_trial_id_to_study_id_and_number", None)
        if self._rdb is None or known is None or trial_id in known:
            return
        from optuna.storages._rdb.storage import _create_scoped_session

        from skiptune.storage.trial_rows import TRIALS, read_trials

        with _create_scoped_session(self._rdb.scoped_session) as session:
            read = read_trials(session, TRIALS.c.trial_id == trial_id)
        self._register(_by_study(read))  # none read: the write raises KeyError (NOT_FOUND) as before

    def get_many_trials(self, data: bytes, context: Any) -> bytes:
        try:
            requests = [api_pb2.GetTrialsRequest.FromString(m) for m in unpack(data)]
        except Exception as exc:  # a malformed request: the client's fault, never the database's
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad GetManyTrials request: {exc}")
        if self._rdb is None:
            replies = [super(FleetStorageService, self).GetTrials(r, context) for r in requests]
        else:
            replies = self._replies(requests, context)
        return pack([r.SerializeToString() for r in replies])

    def _replies(self, requests: list[Any], context: Any) -> list[Any]:
        from skiptune.storage.trial_rows import read_changed

        assert self._rdb is not None
        wanted: dict[int, tuple[set[int], int]] = {}
        for r in requests:  # one study asked twice: the union of both filters
            unfinished, last = wanted.get(r.study_id, (set(), r.trial_id_greater_than))
            wanted[r.study_id] = (unfinished | set(r.included_trial_ids), min(last, r.trial_id_greater_than))
        try:
            read = read_changed(self._rdb, wanted)
        except KeyError as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        by_study = _by_study(read, wanted)
        self._register(by_study)
        return [_reply(r, by_study[r.study_id]) for r in requests]

    def _register(self, by_study: dict[int, list[FrozenTrial]]) -> None:
        """Tell the ``_CachedStorage`` of the trials read, as its own read would have."""
        cached: Any = self._backend
        if not hasattr(cached, "_add_trials_to_cache"):
            return
        from optuna.storages._cached_storage import _StudyInfo

        with cached._lock:
            for sid, trials in by_study.items():
                if trials:
                    cached._studies.setdefault(sid, _StudyInfo())
                    cached._add_trials_to_cache(sid, trials)


def _by_study(read: list[tuple[int, FrozenTrial]], sids: Iterable[int] = ()) -> dict[int, list[FrozenTrial]]:
    """``(study id, trial)`` pairs as trials by study; every study of ``sids`` is there, if need be empty."""
    out: dict[int, list[FrozenTrial]] = {sid: [] for sid in sids}
    for sid, frozen in read:
        out.setdefault(sid, []).append(frozen)
    return out


def _reply(request: Any, trials: list[FrozenTrial]) -> Any:
    """The trials of ``request``'s own filter (the call may have read more for another request)."""
    included = set(request.included_trial_ids)
    greater = request.trial_id_greater_than
    chosen = [t for t in trials if t._trial_id > greater or t._trial_id in included]
    return api_pb2.GetTrialsReply(trials=[_optuna_servicer._to_proto_trial(t) for t in chosen])


def many_trials_handler(service: FleetStorageService) -> Any:
    """The generic handler of ``GetManyTrials`` (bytes in, bytes out: ``pack``/``unpack``)."""
    method = grpc.unary_unary_rpc_method_handler(service.get_many_trials)
    return grpc.method_handlers_generic_handler(SERVICE, {METHOD: method})
