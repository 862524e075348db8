"""``skiptune proxy``: serve a database to workers through Optuna's gRPC storage proxy."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import optuna

from skiptune.cli.common import add_storage, storage_url
from skiptune.errors import SkiptuneError
from skiptune.storage import is_proxy_url, mask_url, open_storage
from skiptune.storage.proxy_client import TOKEN_ENV

if TYPE_CHECKING:
    from skiptune.storage.proxy_server import ProxySecurity

HELP = "run Optuna's gRPC storage proxy in front of a database (needs the `grpc` extra)"
DESCRIPTION = """The proxy spares the database one connection per worker. It listens on 127.0.0.1
unless told otherwise; on any other address it requires TLS (--tls-cert, --tls-key) and a shared
token (--token-file or $SKIPTUNE_PROXY_TOKEN, never printed), and workers use
--storage grpcs://HOST:PORT with $SKIPTUNE_PROXY_TOKEN and $SKIPTUNE_PROXY_CA (the CA's PEM file).
Workers behind the proxy keep their guarantees: a trial whose worker dies or freezes past --grace is
re-run once (its heartbeat is a counter the proxy carries).

examples:
  skiptune proxy --storage postgresql://user:pw@db/skiptune                  # 127.0.0.1:13000
  skiptune worker --model demo --storage grpc://127.0.0.1:13000
  skiptune proxy --storage postgresql://user:pw@db/skiptune --host 0.0.0.0 --processes 4 \\
      --tls-cert proxy.crt --tls-key proxy.key --token-file token
  SKIPTUNE_PROXY_TOKEN=$(cat token) SKIPTUNE_PROXY_CA=ca.crt \\
      skiptune worker --model demo --storage grpcs://proxy-host:13000
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_storage(parser)
    parser.add_argument(
        "--host", default="127.0.0.1",
        help="address to listen on; any but loopback needs TLS and a token (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--port", type=int, default=13000, help="port to listen on (default: %(default)s)")
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate chain of the proxy (turns TLS on)")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument(
        "--token-file", type=Path,
        help=f"file holding the shared token workers must send (default: ${TOKEN_ENV})",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=16,
        help="calls served at once per process, and database connections kept (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--processes", type=int, default=1,
        help="server processes on the port, a core each: more for hundreds of workers (default: %(default)s)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    try:
        import grpc  # noqa: F401
    except ImportError:
        raise SkiptuneError(
            "the gRPC proxy needs grpcio; install it with: pip install 'skiptune[grpc]'"
        ) from None
    if not 1 <= args.port <= 65535:  # gRPC would bind a port of its own choosing and claim this one
        raise SkiptuneError(f"bad --port {args.port}: expected a port number from 1 to 65535, e.g. 13000")
    if not 1 <= args.threads <= 1024:
        raise SkiptuneError(f"bad --threads {args.threads}: expected 1 to 1024, e.g. 16")
    url = storage_url(args)
    if is_proxy_url(url):
        raise SkiptuneError(f"--storage {url!r} is itself a proxy; pass the database URL behind it")
    if not 1 <= args.processes <= 64:
        raise SkiptuneError(f"bad --processes {args.processes}: expected 1 to 64, e.g. 4")
    security = _security(args)
    storage = open_storage(url, pool_size=args.threads)  # checks the database and creates its tables
    _check_port_free(args.host, args.port)
    mode = "TLS, token required" if security.token else "TLS" if security.tls else "plain text, loopback only"
    announce = (
        f"serving {mask_url(url)} on {args.host}:{args.port} ({mode}; {args.processes} process(es) x "
        f"{args.threads} threads; Ctrl-C to stop)"
    )
    if args.processes == 1:
        return _serve(storage, args, security, announce=announce)
    _dispose(storage)  # each process opens its own connections, after the fork
    return _serve_many(url, args, security, announce=announce)


def _serve(
    storage: optuna.storages.BaseStorage, args: argparse.Namespace, security: ProxySecurity, *, announce: str
) -> int:
    from skiptune.storage.proxy_server import build_server

    # Optuna advises its cached wrapper in front of an RDB storage for the proxy (fewer queries).
    cached = optuna.storages.get_storage(storage)
    try:
        server = build_server(cached, host=args.host, port=args.port, security=security, threads=args.threads)
    except RuntimeError as exc:  # gRPC could not bind: the port taken meanwhile, or the TLS material
        raise SkiptuneError(f"cannot serve on {args.host}:{args.port}: {exc}") from None
    server.start()
    if announce:
        print(announce, flush=True)
    try:
        with _sigterm_raises():
            server.wait_for_termination()
    except _Terminated:
        server.stop(grace=5).wait()
        if announce:
            print("proxy stopped (SIGTERM)", flush=True)
    except KeyboardInterrupt:
        server.stop(grace=5).wait()
        if announce:
            print("proxy stopped (Ctrl-C)", flush=True)
    return 0


def _serve_many(url: str, args: argparse.Namespace, security: ProxySecurity, *, announce: str) -> int:
    """``--processes`` servers on one port (gRPC binds with SO_REUSEPORT: the kernel spreads the
    workers' connections over them). One Python process serves calls on one core at a time (its GIL);
    each process has its own connections and Optuna's cache, which reads every unfinished trial
    afresh (as every worker's own cache does), so they agree with each other."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")  # before any gRPC server exists, as gRPC requires
    children = [
        ctx.Process(target=_child, args=(url, args, security, i), name=f"skiptune-proxy-{i}", daemon=True)
        for i in range(args.processes)
    ]
    for child in children:
        child.start()
    print(announce, flush=True)
    try:
        with _sigterm_raises():
            for child in children:
                child.join()
    except (_Terminated, KeyboardInterrupt) as stop:
        for child in children:
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)
        for child in children:
            child.join(10)
        print(f"proxy stopped ({'SIGTERM' if isinstance(stop, _Terminated) else 'Ctrl-C'})", flush=True)
        return 0
    failed = [c.name for c in children if c.exitcode != 0]
    if failed:
        raise SkiptuneError(f"proxy processes {', '.join(failed)} exited with an error; see the log above")
    return 0


def _child(url: str, args: argparse.Namespace, security: ProxySecurity, index: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops its children with SIGTERM
    storage = open_storage(url, pool_size=args.threads)
    _serve(storage, args, security, announce="")


def _dispose(storage: optuna.storages.BaseStorage) -> None:
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()


def _security(args: argparse.Namespace) -> ProxySecurity:
    """TLS material and token from the flags and environment; refuses an exposed proxy without them."""
    from skiptune.storage.proxy_server import ProxySecurity, is_loopback

    if (args.tls_cert is None) != (args.tls_key is None):
        raise SkiptuneError("--tls-cert and --tls-key go together: pass both PEM files, or neither")
    cert = _read(args.tls_cert, "--tls-cert") if args.tls_cert else None
    key = _read(args.tls_key, "--tls-key") if args.tls_key else None
    if args.tls_cert is not None and args.tls_key is not None:
        _check_pair(args.tls_cert, args.tls_key)
    token = _token(args.token_file)
    if token is not None and cert is None:
        raise SkiptuneError(
            "a proxy token needs TLS (anyone on the path could read it in plain text): pass "
            "--tls-cert and --tls-key too"
        )
    if not is_loopback(args.host) and (cert is None or token is None):
        needs = (("--tls-cert/--tls-key", cert is None), (f"a token (${TOKEN_ENV})", token is None))
        missing = " and ".join(m for m, absent in needs if absent)
        raise SkiptuneError(
            f"--host {args.host} is reachable from other machines: the proxy needs {missing} there, or "
            "listen on 127.0.0.1 (the default); see docs/distributed.md"
        )
    return ProxySecurity(cert_chain=cert, private_key=key, token=token)


def _check_pair(cert: Path, key: Path) -> None:
    """The certificate and key must belong together (Python's ssl module checks it as OpenSSL does):
    gRPC itself only says that it could not bind the port."""
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key, password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        raise SkiptuneError(
            f"--tls-cert {str(cert)!r} and --tls-key {str(key)!r} are no certificate and its unencrypted "
            f"key ({getattr(exc, 'reason', None) or exc}); pass the PEM certificate chain and the private "
            "key it was made for"
        ) from None


def _read(path: Path, flag: str) -> bytes:
    try:
        data = path.expanduser().read_bytes()
    except OSError as exc:
        raise SkiptuneError(f"cannot read {flag} {str(path)!r} ({exc.strerror}); pass a PEM file") from None
    if b"-----BEGIN" not in data:
        raise SkiptuneError(f"{flag} {str(path)!r} is not a PEM file (no -----BEGIN line)")
    return data


def _token(path: Path | None) -> str | None:
    if path is None:
        return os.environ.get(TOKEN_ENV) or None
    try:
        token = path.expanduser().read_text().strip()
    except OSError as exc:
        raise SkiptuneError(f"cannot read --token-file {str(path)!r} ({exc.strerror})") from None
    if not token:
        raise SkiptuneError(f"--token-file {str(path)!r} is empty: write the shared token into it")
    return token


def _check_port_free(host: str, port: int) -> None:
    """Fail if something listens on the port already.

    gRPC binds with SO_REUSEPORT, so a second proxy on a busy port starts silently and the kernel
    splits workers' connections between the two (possibly in front of different databases). A bind
    without SO_REUSEPORT fails while anyone listens there.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SkiptuneError(
            f"cannot listen on --host {host!r}: {exc.strerror}; pass an address of this machine"
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore connections in TIME_WAIT
        try:
            probe.bind(address)
        except OSError as exc:
            raise SkiptuneError(
                f"cannot listen on {host}:{port}: {exc.strerror} (another skiptune proxy?); stop what "
                "listens there or pass another --port"
            ) from None


class _Terminated(BaseException):
    """SIGTERM arrived: the normal way a service manager stops the proxy."""


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into an exception out of the server's wait loop, so the proxy exits 0.

    Without it SIGTERM kills the process at once (exit status -15, a failure to service managers);
    with it, RPCs already being handled finish their storage call before the process exits.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handle(_signum: int, _frame: FrameType | None) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
