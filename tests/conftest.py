"""Shared fixtures. Plain functions live in tests/helpers.py so any test module can import them."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from skiptune.nets.edm import EDMPrecond


def _cache_bytecode() -> None:
    """Reuse compiled bytecode where the environment forbids writing it, for this process's imports from
    here on and for the suite's subprocesses (workers, CLI verbs, scripts: over a hundred, each importing
    PyTorch).

    With ``PYTHONDONTWRITEBYTECODE`` set (some CI images and sandboxes set it to keep source trees
    clean) every process compiles PyTorch's Python sources again: ``import torch`` takes ~5 s of CPU
    instead of ~2.5 s, torch-fidelity's ~13 s instead of ~6 s. Instead the bytecode goes to a folder
    of pytest's own cache (``PYTHONPYCACHEPREFIX``): nothing is written next to any source. A prefix
    already chosen is kept.
    """
    if not os.environ.get("PYTHONDONTWRITEBYTECODE") or os.environ.get("PYTHONPYCACHEPREFIX"):
        return
    prefix = Path(__file__).resolve().parents[1] / ".pytest_cache" / "pycache"
    try:
        prefix.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only checkout: leave the setting alone
        return
    del os.environ["PYTHONDONTWRITEBYTECODE"]
    os.environ["PYTHONPYCACHEPREFIX"] = str(prefix)
    sys.pycache_prefix, sys.dont_write_bytecode = str(prefix), False


_cache_bytecode()  # before anything imports torch

# Test modules import `helpers` by its plain name: `tests.helpers` is unreliable because
# torch-fidelity installs a top-level `tests` package into site-packages.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def make_tiny_precond() -> Callable[..., EDMPrecond]:
    """Factory: ``make_tiny_precond("DhariwalUNet", label_dim=10, img_resolution=16)``."""
    from helpers import tiny_precond

    def make(model_type: str = "SongUNet", **kwargs: Any) -> EDMPrecond:
        return tiny_precond(model_type, **kwargs)

    return make
