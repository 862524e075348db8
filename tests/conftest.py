"""Shared fixtures. Plain functions live in tests/helpers.py so any test module can import them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from skiptune.nets.edm import EDMPrecond

# Test modules import `helpers` by its plain name: `tests.helpers` is unreliable because
# torch-fidelity installs a top-level `tests` package into site-packages.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import tiny_precond


@pytest.fixture
def make_tiny_precond() -> Callable[..., EDMPrecond]:
    """Factory: ``make_tiny_precond("DhariwalUNet", label_dim=10, img_resolution=16)``."""

    def make(model_type: str = "SongUNet", **kwargs: Any) -> EDMPrecond:
        return tiny_precond(model_type, **kwargs)

    return make
