"""Files in and out, safely: atomic writes and loads that never run code or paste library advice.

Every output skiptune writes (statistics, caches, image grids, report PNGs) goes through
:func:`atomic_write`: the bytes go to a temporary file in the target's folder, which then replaces
the target in one step, so a full disk or a kill leaves the old file or none, never half of one
(a 0-byte ``grid.png`` would look like a result). :func:`check_output_path` runs the cheap checks
before hours of sampling. Loads (:func:`load_npz`, :func:`load_weights`) turn every way a file can
be bad into one :class:`~skiptune.errors.SkiptuneError` line. PyTorch's own message for a refused
pickle advises retrying with ``weights_only=False``, which for a malicious file is the unsafe
route, so it is never shown.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np

from skiptune.errors import SkiptuneError


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _make_parent(path: Path, *, what: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SkiptuneError(
            f"cannot create the folder of {what} {str(path)!r}: {_reason(exc)}; "
            "pass a path in a writable folder"
        ) from None


def check_output_path(
    path: str | os.PathLike[str], *, what: str, suffixes: Iterable[str] | None = None
) -> Path:
    """Fail now, not after the work, when ``path`` cannot receive ``what``.

    Checks the suffix (when ``suffixes`` are given), that the path is no folder, and that its folder
    exists or can be created and takes a new file (a probe file is created and removed).
    """
    path = Path(path)
    allowed = tuple(suffixes or ())
    if path.is_dir():
        raise SkiptuneError(f"{what} {str(path)!r} is a folder; pass a file name inside it")
    if allowed and path.suffix.lower() not in allowed:
        raise SkiptuneError(
            f"bad output path {str(path)!r} for {what}: expected a name ending in {' or '.join(allowed)}, "
            f"e.g. {path.with_suffix(allowed[0]).name}"
        )
    _make_parent(path, what=what)
    try:
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".probe")
    except OSError as exc:
        raise SkiptuneError(
            f"cannot write {what} into {str(path.parent)!r}: {_reason(exc)}; pass a path in a writable folder"
        ) from None
    os.close(fd)
    os.unlink(probe)
    return path


def check_output_dir(path: str | os.PathLike[str], *, what: str) -> Path:
    """Create the folder ``path`` (and parents) and check that it takes files; one line when not."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SkiptuneError(f"{what} {str(path)!r} is a file, not a folder; pass a folder path")
    check_output_path(path / "probe", what=what)
    return path


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None], *, what: str) -> None:
    """Write ``path`` through ``write(file)``: the whole new content appears at once, or nothing.

    A failure (disk full, read-only folder, an exception in ``write``) removes the temporary file
    and leaves an earlier ``path`` untouched; OS errors become one line naming the file.
    """
    path = Path(path)
    _make_parent(path, what=what)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise SkiptuneError(
            f"cannot write {what} {str(path)!r}: {_reason(exc)}; pass a path in a writable folder"
        ) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # readers see the old file or the whole new one, never half
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise SkiptuneError(
            f"cannot write {what} {str(path)!r}: {_reason(exc)}; free disk space or pass a path on "
            "another disk, then run the command again"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_npz(path: str | os.PathLike[str], *, what: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (pickled object arrays refused); a bad file is one line."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("a single .npy array, not an .npz archive")
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, pickle.UnpicklingError) as exc:
        reason = "the file is empty" if isinstance(exc, EOFError) else _first_line(exc)
        raise SkiptuneError(
            f"cannot read {what} {str(path)!r} as .npz ({reason}); the file is truncated or of another "
            "format: write it again"
        ) from None


def load_weights(path: str | os.PathLike[str], *, what: str, safe_globals: Iterable[Any] = ()) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never code.

    A pickle that needs anything else (code, a class) is refused in one line that says so, without
    PyTorch's advice to retry with ``weights_only=False``.
    """
    import torch

    path = Path(path)
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(safe_globals)):
            warnings.simplefilter("ignore")  # "Detected pickle protocol 4 ...": noise for a refused file
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unpickler_reason(exc)
        if reason.startswith("Unsupported global"):  # a pickle that would import and call something
            raise SkiptuneError(
                f"refused to load {what} {str(path)!r}: it is not a plain weights file ({reason}); "
                "skiptune never runs code stored in a file: save the weights as a state dict "
                "(torch.save(module.state_dict(), PATH))"
            ) from None
        raise SkiptuneError(
            f"cannot read {what} {str(path)!r}: not a plain weights file ({reason}); the file is "
            "truncated, of another format or a pickle of more than tensors: save it again with torch.save"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        reason = "the file is empty" if isinstance(exc, EOFError) else _first_line(exc)
        raise SkiptuneError(
            f"cannot read {what} {str(path)!r} ({reason}); the file is truncated or of another format"
        ) from None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(exc).__name__


def _unpickler_reason(exc: BaseException) -> str:
    """The unpickler's own reason ("Unsupported global: GLOBAL posix.system"), not the advice around it."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"Unsupported global: GLOBAL {found.group(1)}"
    _, marker, rest = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in rest.splitlines() if line.strip()] if marker else []
    return lines[0][:200] if lines else "not a weights pickle"
