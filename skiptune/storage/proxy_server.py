"""The server of ``skiptune proxy``: Optuna's gRPC storage service, behind TLS and the fleet's token.

Optuna's ``run_grpc_proxy_server`` listens in plain text and lets anyone in. This builds the same
service (Optuna's own servicer) on a ``grpc.server`` with:

* TLS from a certificate chain and key (``grpc.ssl_server_credentials``): a plain-text client fails
  its handshake and never reaches the service;
* a token check (a ``grpc.ServerInterceptor``): every call must carry ``authorization: Bearer TOKEN``
  (what ``grpc.access_token_call_credentials`` sends), compared in constant time; others are answered
  UNAUTHENTICATED and never reach the database. The token is never logged;
* cheaper trial reads (``proxy_reads.py``): ``GetTrials`` straight from the database, and many
  studies' in one call;
* storage errors made sortable for the workers: Optuna's servicer turns a database outage into
  gRPC's UNKNOWN with a message that says nothing of its cause; here a transient database failure
  (``failures.classify``) is answered UNAVAILABLE, which workers retry like an outage of
  their own database, and a permanent one UNKNOWN with the driver's first line.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import optuna
from optuna.storages._grpc.auto_generated import api_pb2_grpc as _optuna_api

from skiptune.storage.failures import TRANSIENT, classify, first_line
from skiptune.storage.proxy_reads import FleetStorageService, many_trials_handler

_log = logging.getLogger(__name__)

REFUSAL = "missing or wrong proxy token: set SKIPTUNE_PROXY_TOKEN to the token the proxy was started with"


@dataclass(frozen=True)
class ProxySecurity:
    """TLS material (PEM bytes) and the shared token; all None: plain text, no token (loopback only)."""

    cert_chain: bytes | None = None
    private_key: bytes | None = None
    token: str | None = None

    @property
    def tls(self) -> bool:
        return self.cert_chain is not None

    def __repr__(self) -> str:  # never show the key or the token
        return f"ProxySecurity(tls={self.tls}, token={'set' if self.token else 'none'})"


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` reaches this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any interface


def build_server(
    storage: optuna.storages.BaseStorage, *, host: str, port: int, security: ProxySecurity, threads: int
) -> Any:
    """A ``grpc.Server`` (not started) serving ``storage`` on ``host:port``."""
    interceptors: list[Any] = [_TokenCheck(security.token)] if security.token else []
    interceptors.append(_StorageErrors())
    server = grpc.server(ThreadPoolExecutor(max_workers=threads), interceptors=interceptors)
    service = FleetStorageService(storage)  # Optuna's, with cheaper trial reads (proxy_reads.py)
    _optuna_api.add_StorageServiceServicer_to_server(service, server)
    server.add_generic_rpc_handlers((many_trials_handler(service),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # an IPv6 address in brackets
    if security.tls:
        assert security.private_key is not None and security.cert_chain is not None
        credentials = grpc.ssl_server_credentials([(security.private_key, security.cert_chain)])
        server.add_secure_port(address, credentials)
    else:
        server.add_insecure_port(address)
    return server


def _handler_of(behaviour: Callable[[Any, Any], Any], like: Any) -> Any:
    return grpc.unary_unary_rpc_method_handler(
        behaviour,
        request_deserializer=getattr(like, "request_deserializer", None),
        response_serializer=getattr(like, "response_serializer", None),
    )


class _TokenCheck(grpc.ServerInterceptor):
    """Let through only calls that carry the fleet's token (Optuna's RPCs are all unary-unary)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()
        self._refused = 0
        self._lock = threading.Lock()

        def refuse(_request: Any, context: Any) -> Any:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)

        self._deny = grpc.unary_unary_rpc_method_handler(refuse)

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if isinstance(given, str) and hmac.compare_digest(given.encode(), self._expected):
            return continuation(details)
        with self._lock:
            self._refused += 1
            count = self._refused
        if count == 1 or count % 1000 == 0:  # one line, not one per call of a misconfigured fleet
            _log.warning("refused %d call(s) without the proxy's token (%s)", count, details.method)
        return self._deny


class _StorageErrors(grpc.ServerInterceptor):
    """Answer a database outage behind the proxy with UNAVAILABLE (retried by workers), not UNKNOWN."""

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        def call(request: Any, context: Any) -> Any:
            try:
                return inner(request, context)
            except Exception as exc:
                kind = classify(exc)
                if kind is None:
                    raise  # the servicer's own aborts (NOT_FOUND, ...) and anything not of the database
                if kind == TRANSIENT:
                    context.abort(grpc.StatusCode.UNAVAILABLE, f"the proxy's database: {first_line(exc)}")
                context.abort(grpc.StatusCode.UNKNOWN, f"the proxy's database failed: {first_line(exc)}")

        return _handler_of(call, handler)
