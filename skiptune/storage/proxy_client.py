"""The workers' side of ``skiptune proxy``: Optuna's gRPC storage client over TLS with the fleet's
token, and a liveness record that the proxy carries.

``grpc://HOST:PORT`` is a plain-text channel (for a proxy on loopback); ``grpcs://HOST:PORT`` is TLS,
checked against the CA file in ``$SKIPTUNE_PROXY_CA`` (default: the system's roots), and sends the
token in ``$SKIPTUNE_PROXY_TOKEN`` as ``authorization: Bearer ...`` metadata (grpc's own call
credentials, which it sends only over a secure channel). The token is read from the environment
only, never from the URL, so it shows neither in ``ps`` nor in logs.

Liveness: Optuna's heartbeat table is not reachable through its proxy, so a trial's heartbeat is a
trial system attribute (``skiptune_beat``) that the worker's heartbeat thread rewrites with a
growing counter. Readers never compare it with a clock: the stale sweep (``search/worker/stale.py``) counts a
RUNNING trial dead when *it* has seen the counter unchanged for longer than the grace period, so the
workers' and the proxy's clocks may disagree.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._grpc import client as _optuna_client  # private: the channel is made in _setup
from optuna.trial import FrozenTrial

from skiptune.errors import SkiptuneError

BEAT_ATTR = "skiptune_beat"  # trial system attr: the heartbeat counter (read by the stale sweep)

TOKEN_ENV = "SKIPTUNE_PROXY_TOKEN"
CA_ENV = "SKIPTUNE_PROXY_CA"
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1)]  # as Optuna's own channel


def proxy_credentials() -> tuple[bytes | None, str | None]:
    """(CA certificates, token) from the environment; a CA path that cannot be read is one line."""
    ca_path = os.environ.get(CA_ENV) or None
    token = os.environ.get(TOKEN_ENV) or None
    if ca_path is None:
        return None, token
    try:
        return Path(ca_path).expanduser().read_bytes(), token
    except OSError as exc:
        raise SkiptuneError(
            f"cannot read ${CA_ENV}={ca_path!r} ({exc.strerror}); point it at the PEM file of the CA "
            "that signed the proxy's certificate"
        ) from None


def make_channel(host: str, port: int, *, tls: bool) -> Any:
    """A gRPC channel to the proxy: TLS + token for ``grpcs``, plain text for ``grpc``."""
    import grpc

    target = f"{host}:{port}"
    if not tls:
        return grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
    ca, token = proxy_credentials()
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    if token is not None:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token)
        )
    return grpc.secure_channel(target, credentials, options=_CHANNEL_OPTIONS)


class FleetProxy(_optuna_client.GrpcStorageProxy):
    """Optuna's ``GrpcStorageProxy`` on skiptune's channel, with a heartbeat the proxy carries.

    ``heartbeat_interval``/``grace_period`` mirror ``RDBStorage``'s: the worker's ``Heartbeat`` and
    stale sweep read them here (None: no heartbeat, as for the query verbs).
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        tls: bool,
        heartbeat_interval: int | None = None,
        grace_period: int | None = None,
    ) -> None:
        self.tls = tls
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self._beats = itertools.count(1)
        self._many_reads = True  # the proxy answers GetManyTrials (False after an UNIMPLEMENTED)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # printed by every verb
            super().__init__(host=host, port=port)

    def _setup(self) -> None:  # Optuna's makes an insecure channel; everything else is Optuna's
        self._channel = make_channel(self._host, self._port, tls=self.tls)
        self._stub = _optuna_client.api_pb2_grpc.StorageServiceStub(self._channel)
        self._cache = _optuna_client.GrpcClientCache(self._stub)

    def read_many(self, sids: list[int]) -> dict[int, list[FrozenTrial]]:
        """``{sid: trials}`` (not copies) of many studies in one call (``proxy_reads.GetManyTrials``):
        the unfinished and new trials of each, into Optuna's client cache, which keeps the finished
        ones. A proxy without the call (Optuna's own) is read study by study."""
        import grpc

        if self._many_reads:
            try:
                return self._read_many_at_once(sids)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    raise KeyError(exc.details()) from exc
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                self._many_reads = False
        return {sid: self.get_all_trials(sid, deepcopy=False) for sid in sids}

    def _read_many_at_once(self, sids: list[int]) -> dict[int, list[FrozenTrial]]:
        from optuna.storages._grpc import servicer as _optuna_servicer  # private: trials from messages
        from optuna.storages._grpc.auto_generated import api_pb2

        from skiptune.storage import proxy_reads  # these import grpc: not in the workers of a database

        cache = self._cache
        sids = list(dict.fromkeys(sids))
        with cache.lock:
            entries = [cache.studies.setdefault(sid, _optuna_client.GrpcClientCacheEntry()) for sid in sids]
            asked = [_trials_request(sid, e).SerializeToString() for sid, e in zip(sids, entries)]
            call = self._channel.unary_unary(proxy_reads.PATH)
            replies = proxy_reads.unpack(call(proxy_reads.pack(asked)))
            if len(replies) != len(sids):
                raise SkiptuneError(f"the proxy answered {len(replies)} studies' trials for {len(sids)}")
            for sid, reply in zip(sids, replies, strict=True):
                for proto in api_pb2.GetTrialsReply.FromString(reply).trials:
                    cache._add_trial_to_cache(sid, _optuna_servicer._from_proto_trial(proto))
            return {sid: sorted(e.trials.values(), key=_number) for sid, e in zip(sids, entries, strict=True)}

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def record_heartbeat(self, trial_id: int) -> None:
        """One beat: the trial's counter goes up (its value means nothing; only that it changes).

        A trial that ended meanwhile (a sweep failed it while this worker was frozen or cut off) takes
        no beat; the worker's main thread finds it ended and drops it (``lineage.taken_over``).
        """
        with contextlib.suppress(UpdateFinishedTrialError):
            self.set_trial_system_attr(trial_id, BEAT_ATTR, next(self._beats))

    def probe(self, timeout: float) -> None:
        """One cheap call that needs the proxy, its credentials and its database: raises grpc's
        ``RpcError`` (UNAVAILABLE while unreachable, UNAUTHENTICATED without the right token)."""
        import grpc

        request = _optuna_client.api_pb2.GetStudyIdFromNameRequest(study_name="skiptune/probe")
        try:
            self._stub.GetStudyIdFromName(request, timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:  # NOT_FOUND: answered, all is well
                raise

    def wait_server_ready(self, timeout: float | None = None) -> None:
        """Probe until the proxy answers or ``timeout`` passes (then the last error is raised)."""
        import grpc

        deadline = time.monotonic() + (timeout if timeout is not None else float("inf"))
        while True:
            try:
                return self.probe(timeout=max(1.0, min(5.0, deadline - time.monotonic())))
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() >= deadline:
                    raise
            time.sleep(0.5)


def _trials_request(sid: int, entry: _optuna_client.GrpcClientCacheEntry) -> Any:
    """Optuna's client cache's request: the study's unfinished trials and those after its last finished."""
    from optuna.storages._grpc.auto_generated import api_pb2

    return api_pb2.GetTrialsRequest(
        study_id=sid,
        included_trial_ids=entry.unfinished_trial_ids,
        trial_id_greater_than=entry.last_finished_trial_id,
    )


def _number(trial: FrozenTrial) -> int:
    return trial.number
