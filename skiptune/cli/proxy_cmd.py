"""``skiptune proxy``: serve a database to workers through Optuna's gRPC storage proxy."""

from __future__ import annotations

import argparse
import signal
import socket
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import optuna

from skiptune.cli.common import add_storage, storage_url
from skiptune.errors import SkiptuneError
from skiptune.storage import mask_url, open_storage

HELP = "run Optuna's gRPC storage proxy in front of a database (needs the `grpc` extra)"
DESCRIPTION = """Workers then use --storage grpc://HOST:PORT. The proxy caches trials and spares the
database one connection per worker. Heartbeats are not forwarded by Optuna's proxy: workers that
need dead-trial detection should connect to the database directly.

examples:
  skiptune proxy --storage postgresql://user:pw@db/skiptune --host 0.0.0.0 --port 13000
  skiptune worker --model demo --storage grpc://proxyhost:13000
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_storage(parser)
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=13000, help="port to listen on (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    try:
        import grpc  # noqa: F401
    except ImportError:
        raise SkiptuneError(
            "the gRPC proxy needs grpcio; install it with: pip install 'skiptune[grpc]'"
        ) from None
    if not 1 <= args.port <= 65535:  # gRPC would bind a port of its own choosing and claim this one
        raise SkiptuneError(f"bad --port {args.port}: expected a port number from 1 to 65535, e.g. 13000")
    url = storage_url(args)
    if url.startswith("grpc://"):
        raise SkiptuneError(f"--storage {url!r} is itself a proxy; pass the database URL behind it")
    storage = open_storage(url)
    _check_port_free(args.host, args.port)
    print(f"serving {mask_url(url)} on {args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    # Optuna advises its cached wrapper in front of an RDB storage for the proxy (fewer queries).
    cached = optuna.storages.get_storage(storage)
    try:
        with _sigterm_raises(), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # printed on every start
            optuna.storages.run_grpc_proxy_server(cached, host=args.host, port=args.port)
    except _Terminated:
        print("proxy stopped (SIGTERM)", flush=True)
    return 0


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
