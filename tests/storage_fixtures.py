"""Storage fixtures for the storage/search tests: a fresh SQLite file or a fresh PostgreSQL database.

Import the fixtures into a test module (``from storage_fixtures import storage_url``). PostgreSQL
comes from ``$SKIPTUNE_TEST_POSTGRES_URL`` (default: the local server); every test gets its own
database ``skiptune_test_<hex>`` (created and dropped here) so tests never see each other's studies.
Tests on PostgreSQL are skipped, with the reason, only when the server cannot be reached.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import sqlalchemy.engine
import torch

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def postgres_admin_url() -> str:
    return os.environ.get("SKIPTUNE_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def _psycopg_conninfo(url: str) -> str:
    parsed = sqlalchemy.engine.make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


def _admin_connection():  # type: ignore[no-untyped-def]
    import psycopg

    try:
        return psycopg.connect(_psycopg_conninfo(postgres_admin_url()), autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(
            f"PostgreSQL at {postgres_admin_url()} unreachable ({str(exc).strip()[:120]}); "
            "set SKIPTUNE_TEST_POSTGRES_URL to a reachable server to run these tests"
        )


def fresh_postgres_database() -> Iterator[str]:
    """Create a new empty database, yield its URL, drop it (even with connections still open)."""
    name = f"skiptune_test_{uuid.uuid4().hex[:12]}"
    with _admin_connection() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = sqlalchemy.engine.make_url(postgres_admin_url()).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with _admin_connection() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=BACKENDS)
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty storage: SQLite file in tmp_path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'studies.db'}"
    else:
        yield from fresh_postgres_database()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from fresh_postgres_database()


# ------------------------------------------------------------------ a tiny model + objective on disk


@dataclass(frozen=True)
class SearchAssets:
    """Files a real search needs, tiny: an 8x8 greyscale EDM net, a TorchScript extractor, reference stats."""

    model: Path
    extractor: Path
    reference: Path

    def study_args(
        self, *, nfes: str, trials: int, storage: str, n_samples: int = 16, rungs: str = "8,16"
    ) -> list[str]:
        return [
            "study", "create", "--model", str(self.model), "--sampler", "euler", "--nfe", nfes,
            "--extractor", f"torchscript:{self.extractor}", "--reference", str(self.reference),
            "--n-samples", str(n_samples), "--rungs", rungs, "--trials", str(trials), "--storage", storage,
        ]  # fmt: skip

    def worker(
        self, url: str, log: Path, *, batch_size: int = 16, grace: int = 3, extra: tuple[str, ...] = ()
    ) -> subprocess.Popen[bytes]:
        """A `skiptune worker` process on this model's NFE 2 and 3 studies, on the CPU, 1 s heartbeat."""
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "SKIPTUNE_STORAGE": url}
        command = [
            sys.executable, "-m", "skiptune", "worker", "--model", str(self.model), "--nfe", "2,3",
            "--device", "cpu", "--batch-size", str(batch_size), "--heartbeat", "1", "--grace", str(grace),
            *extra,
        ]  # fmt: skip
        return subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


class _TinyFeatures(torch.nn.Module):
    """2x2 average pooling of [0, 1] pixels through a fixed random 16 -> 6 linear map."""

    def __init__(self) -> None:  # no class annotations: TorchScript infers the ints' types
        super().__init__()
        self.feature_dim = 6
        self.input_channels = 1
        self.proj = torch.nn.Linear(16, 6, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(6, 16, generator=torch.Generator().manual_seed(5)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.avg_pool2d(x.float() / 255.0, 2)
        return self.proj(pooled.flatten(1))


def save_tiny_model(path: Path, *, seed: int) -> Path:
    """An 8x8 greyscale EDMPrecond (SongUNet, 8 channels, no attention: cheap on shared CPUs)."""
    from helpers import TINY_SONG, tiny_precond

    from skiptune.nets.checkpoints import save_checkpoint

    small = {**TINY_SONG, "model_channels": 8, "attn_resolutions": []}
    config = dict(img_resolution=8, img_channels=1, label_dim=0, model_type="SongUNet", **small)
    net = tiny_precond("SongUNet", img_resolution=8, img_channels=1, seed=seed, **small)
    return save_checkpoint(net, path, config=config)


def make_search_assets(directory: Path) -> SearchAssets:
    import warnings

    import numpy as np

    from skiptune.objectives.features import create_extractor
    from skiptune.objectives.reference import ReferenceStats, save_reference

    directory.mkdir(parents=True, exist_ok=True)
    model = save_tiny_model(directory / "tiny.pt", seed=3)
    extractor = directory / "features.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; its files are supported
        torch.jit.save(torch.jit.script(_TinyFeatures()), str(extractor))
    ext = create_extractor(f"torchscript:{extractor}")
    gen = torch.Generator().manual_seed(11)
    feats = ext(torch.randint(0, 256, (64, 1, 8, 8), generator=gen, dtype=torch.uint8)).double().numpy()
    reference = directory / "reference.npz"
    save_reference(
        ReferenceStats(
            mu=feats.mean(0), sigma=np.cov(feats, rowvar=False), count=64, resolution=8, extractor=ext.name
        ),
        reference,
    )
    return SearchAssets(model=model, extractor=extractor, reference=reference)


@pytest.fixture
def tiny_model_saver() -> Callable[..., Path]:
    """``tiny_model_saver(path, seed=...)`` saves another tiny model (other seed: other fingerprint)."""
    return save_tiny_model


@pytest.fixture
def fresh_search_assets(tmp_path: Path) -> SearchAssets:
    """Assets of this test alone (it may change them)."""
    return make_search_assets(tmp_path / "assets")


@pytest.fixture(scope="session")
def search_assets(tmp_path_factory: pytest.TempPathFactory) -> SearchAssets:
    return make_search_assets(tmp_path_factory.mktemp("search_assets"))


@contextlib.contextmanager
def plain_storage(url: str) -> Iterator[optuna.storages.RDBStorage]:
    """A plain Optuna storage for a test's polling reads (they never wait on a stopped worker's lock);
    its connections are closed afterwards, so polling does not pile up idle server connections."""
    from skiptune.storage import normalize_url

    storage = optuna.storages.RDBStorage(normalize_url(url))
    try:
        yield storage
    finally:
        storage.engine.dispose()
