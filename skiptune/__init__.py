"""skiptune: a search service for Skip-Tuning coefficients of diffusion UNets.

Public API (re-exports only; imported lazily so that ``import skiptune`` and the CLI start fast):

    SkipSchedule, skip_tuning, apply_skip_schedule      the Skip-Tuning transform
    HookSkipAdapter, SkipPoint, SKIP_ADAPTERS           supporting another UNet
    load_checkpoint, save_checkpoint                    networks from and to files (EDM .pkl read safely)
    load_model, register_model, fingerprint             named models and their weight hashes
    generate_images                                     seeded sampling (common random numbers)
    best_coefficients                                   the best pair recorded in a storage
    SkiptuneError, EvaluationError                      user errors, failed evaluations
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "SkipSchedule": "skiptune.skips",
    "skip_tuning": "skiptune.skips",
    "apply_skip_schedule": "skiptune.skips",
    "HookSkipAdapter": "skiptune.skips",
    "SkipPoint": "skiptune.skips",
    "SKIP_ADAPTERS": "skiptune.skips",
    "load_checkpoint": "skiptune.nets.checkpoints",
    "save_checkpoint": "skiptune.nets.checkpoints",
    "load_model": "skiptune.nets.registry",
    "register_model": "skiptune.nets.registry",
    "fingerprint": "skiptune.nets.registry",
    "LoadedModel": "skiptune.nets.registry",
    "generate_images": "skiptune.sampling",
    "best_coefficients": "skiptune.search.query",
    "SkiptuneError": "skiptune.errors",
    "EvaluationError": "skiptune.errors",
}

__all__ = [
    "SKIP_ADAPTERS",
    "EvaluationError",
    "HookSkipAdapter",
    "LoadedModel",
    "SkipPoint",
    "SkipSchedule",
    "SkiptuneError",
    "__version__",
    "apply_skip_schedule",
    "best_coefficients",
    "fingerprint",
    "generate_images",
    "load_checkpoint",
    "load_model",
    "register_model",
    "save_checkpoint",
    "skip_tuning",
]

if TYPE_CHECKING:  # pragma: no cover
    from skiptune.errors import EvaluationError, SkiptuneError
    from skiptune.nets.checkpoints import load_checkpoint, save_checkpoint
    from skiptune.nets.registry import LoadedModel, fingerprint, load_model, register_model
    from skiptune.sampling import generate_images
    from skiptune.search.query import best_coefficients
    from skiptune.skips import (
        SKIP_ADAPTERS,
        HookSkipAdapter,
        SkipPoint,
        SkipSchedule,
        apply_skip_schedule,
        skip_tuning,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'skiptune' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
