"""``skiptune proxy``: serve a database to workers through Optuna's gRPC storage proxy."""

from __future__ import annotations

import argparse

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
    url = storage_url(args)
    if url.startswith("grpc://"):
        raise SkiptuneError(f"--storage {url!r} is itself a proxy; pass the database URL behind it")
    storage = open_storage(url)
    print(f"serving {mask_url(url)} on {args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    # Optuna advises its cached wrapper in front of an RDB storage for the proxy (fewer queries).
    cached = optuna.storages.get_storage(storage)
    optuna.storages.run_grpc_proxy_server(cached, host=args.host, port=args.port)
    return 0
