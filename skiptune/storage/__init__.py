"""Storage: one URL -> one Optuna storage, on SQLite, PostgreSQL or an Optuna gRPC proxy.

The schema is Optuna's own RDB schema, unmodified, so ``optuna.load_study``, Optuna's CLI and
optuna-dashboard read what skiptune writes.
"""

from __future__ import annotations

from skiptune.storage.open import open_storage
from skiptune.storage.url import is_proxy_url, mask_url, normalize_url

__all__ = ["is_proxy_url", "mask_url", "normalize_url", "open_storage"]
