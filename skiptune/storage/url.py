"""Storage URLs: validation, normalisation (``postgresql://`` -> psycopg 3) and password masking."""

from __future__ import annotations

import sqlalchemy.engine
import sqlalchemy.exc

from skiptune.errors import SkiptuneError

#: URL schemes skiptune accepts (the driver part after ``+`` is checked separately).
SCHEMES = ("sqlite", "postgresql", "grpc", "grpcs")  # grpcs: the proxy over TLS

_EXAMPLES = (
    "sqlite:///skiptune.db, postgresql+psycopg://user:password@host:5432/dbname, grpc://127.0.0.1:13000, "
    "grpcs://proxy-host:13000"
)


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (safe to print in errors and logs)."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        # Not parseable: still never echo something that may hold a password after ':' and before '@'.
        head, sep, tail = url.rpartition("@")
        return f"{head.split(':', 2)[0]}:***@{tail}" if sep else url


def normalize_url(url: str) -> str:
    """Check the scheme and pick skiptune's driver: plain ``postgresql://`` means psycopg 3."""
    scheme, sep, _ = url.partition("://")
    backend, _, driver = scheme.partition("+")
    if not sep or backend not in SCHEMES:
        raise SkiptuneError(
            f"unsupported storage URL {mask_url(url)!r}: expected one of the schemes "
            f"{', '.join(SCHEMES)}, e.g. {_EXAMPLES}"
        )
    _check_port(url)
    if backend == "postgresql" and driver in ("", "psycopg2", "psycopg"):
        # psycopg 3 is the driver skiptune installs (extra `postgres`); psycopg2 is not a dependency.
        return "postgresql+psycopg://" + url.partition("://")[2]
    if backend == "postgresql":
        raise SkiptuneError(
            f"unsupported PostgreSQL driver {driver!r} in {mask_url(url)!r}: use postgresql+psycopg://"
        )
    if backend == "sqlite" and driver:
        raise SkiptuneError(f"unsupported SQLite driver {driver!r} in {mask_url(url)!r}: use sqlite:///PATH")
    return url


def is_proxy_url(url: str) -> bool:
    """Whether ``url`` names a ``skiptune proxy`` (plain-text ``grpc://`` or TLS ``grpcs://``)."""
    return url.startswith(("grpc://", "grpcs://"))


def _check_port(url: str) -> None:
    """A port that is no number (``host:abc``) or out of range: one line now, not a driver traceback."""
    try:
        port = sqlalchemy.engine.make_url(url).port
    except ValueError:
        port = -1
    except sqlalchemy.exc.ArgumentError as exc:
        raise SkiptuneError(f"bad storage URL {mask_url(url)!r} ({exc}); expected e.g. {_EXAMPLES}") from None
    if port is not None and not 1 <= port <= 65535:
        host_port = url.partition("://")[2].split("/", 1)[0].rpartition("@")[2]
        raise SkiptuneError(
            f"bad port in storage URL {mask_url(url)!r} ({host_port!r}): expected a number from 1 to 65535, "
            "e.g. host:5432"
        )
