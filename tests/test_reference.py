"""Reference statistics: formats (ours, EDM's, torch-fidelity's), computing, caching, compatibility."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch_fidelity.metric_fid import fid_featuresdict_to_statistics_cached

from skiptune.errors import SkiptuneError
from skiptune.objectives.data import TensorSource
from skiptune.objectives.reference import (
    ReferenceStats,
    check_compatible,
    compute_reference,
    load_reference,
    save_reference,
)


class _LinearExtractor:
    """A FeatureExtractor: a fixed random projection of the pixels; counts its calls."""

    def __init__(self, *, dim: int = 6, pixels: int = 2 * 8 * 8, seed: int = 0, name: str = "linear") -> None:
        self.name = name
        self.feature_dim = dim
        self.input_channels = 2
        self.device = torch.device("cpu")
        self.module = torch.nn.Linear(pixels, dim)
        torch.nn.init.normal_(self.module.weight, generator=torch.Generator().manual_seed(seed))
        self.calls = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        with torch.no_grad():
            return self.module(images.flatten(1).float() / 255)


def _random_reference(dim: int, *, seed: int, **meta: object) -> ReferenceStats:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3 * dim, dim))
    return ReferenceStats(mu=x.mean(0), sigma=np.cov(x, rowvar=False), **meta)  # type: ignore[arg-type]


def test_our_npz_round_trip_keeps_metadata_and_hash(tmp_path: Path) -> None:
    ref = _random_reference(5, seed=1, count=15, resolution=32, extractor="fmnist-classifier", source="unit")
    save_reference(ref, tmp_path / "r.npz")
    back = load_reference(tmp_path / "r.npz")
    np.testing.assert_array_equal(back.mu, ref.mu)
    np.testing.assert_array_equal(back.sigma, ref.sigma)
    assert (back.count, back.resolution, back.extractor, back.source) == (15, 32, "fmnist-classifier", "unit")
    assert back.sha256 == ref.sha256 and back.feature_dim == 5
    assert [p.name for p in tmp_path.iterdir()] == ["r.npz"]  # the temp file was renamed, not left


def test_edm_npz_has_no_metadata_and_same_hash_for_same_content(tmp_path: Path) -> None:
    ref = _random_reference(4, seed=2, extractor="x")
    np.savez(tmp_path / "edm.npz", mu=ref.mu, sigma=ref.sigma)
    edm = load_reference(tmp_path / "edm.npz")
    assert (edm.extractor, edm.count, edm.resolution) == (None, None, None)
    assert edm.sha256 == ref.sha256
    other = _random_reference(4, seed=3)
    assert other.sha256 != ref.sha256


def test_torch_fidelity_cached_statistics(tmp_path: Path) -> None:
    class _Named:
        def get_name(self) -> str:
            return "inception-v3-compat"

    features = torch.randn(40, 7, generator=torch.Generator().manual_seed(4))
    stats = fid_featuresdict_to_statistics_cached(
        {"2048": features},
        "my-data-train",
        _Named(),
        "2048",
        cache=True,
        cache_root=str(tmp_path),
        verbose=False,
    )
    path = tmp_path / "my-data-train-inception-v3-compat-stat-fid-2048.pt"
    assert path.is_file()
    ref = load_reference(path)
    assert ref.extractor == "inception-v3-compat" and ref.feature_dim == 7
    np.testing.assert_allclose(ref.mu, stats["mu"])
    np.testing.assert_allclose(
        ref.sigma, np.cov(features.numpy().astype(np.float64), rowvar=False), rtol=1e-6
    )


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(SkiptuneError, match="skiptune stats"):
        load_reference(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", mean=np.ones(3))
    with pytest.raises(SkiptuneError, match="need 'mu' and 'sigma'"):
        load_reference(tmp_path / "bad.npz")
    np.savez(tmp_path / "nan.npz", mu=np.array([np.nan, 1.0]), sigma=np.eye(2))
    with pytest.raises(SkiptuneError, match="NaN"):
        load_reference(tmp_path / "nan.npz")
    np.savez(tmp_path / "shape.npz", mu=np.ones(3), sigma=np.eye(2))
    with pytest.raises(SkiptuneError, match="expected"):
        load_reference(tmp_path / "shape.npz")
    (tmp_path / "x.txt").write_text("mu")
    with pytest.raises(SkiptuneError, match="unknown reference statistics format"):
        load_reference(tmp_path / "x.txt")
    torch.save({"mu": 1}, tmp_path / "a-inception-v3-compat-stat-fid-2048.pt")
    with pytest.raises(SkiptuneError, match=r"a dict with 'mu' and 'sigma'"):
        load_reference(tmp_path / "a-inception-v3-compat-stat-fid-2048.pt")
    torch.save({"mu": np.ones(2), "sigma": np.ones(2)}, tmp_path / "a-inception-v3-compat-stat-fid-2048.pt")
    with pytest.raises(SkiptuneError, match="bad reference statistics"):
        load_reference(tmp_path / "a-inception-v3-compat-stat-fid-2048.pt")


def test_compute_reference_matches_numpy_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIPTUNE_CACHE", str(tmp_path / "cache"))
    images = torch.randint(
        0, 256, (37, 2, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(5)
    )
    source = TensorSource(images, description="random")
    extractor = _LinearExtractor()
    ref = compute_reference(source, extractor, batch_size=10, progress=False)
    with torch.no_grad():
        feats = extractor.module(images.flatten(1).float() / 255).double().numpy()
    np.testing.assert_allclose(ref.mu, feats.mean(0), rtol=1e-6)
    np.testing.assert_allclose(ref.sigma, np.cov(feats, rowvar=False), rtol=1e-5, atol=1e-9)
    assert (ref.count, ref.resolution, ref.extractor, ref.source) == (37, 8, "linear", "random")
    assert extractor.calls == 4
    assert len(list((tmp_path / "cache" / "reference").glob("*.npz"))) == 1

    again = compute_reference(TensorSource(images.clone(), description="random"), extractor, progress=False)
    assert extractor.calls == 4 and again.sha256 == ref.sha256  # served from the cache
    other_weights = _LinearExtractor(seed=1)
    assert compute_reference(source, other_weights, progress=False).sha256 != ref.sha256
    changed = images.clone()
    changed[0, 0, 0, 0] ^= 1
    compute_reference(TensorSource(changed, description="random"), extractor, batch_size=10, progress=False)
    assert extractor.calls == 8  # one changed pixel is a different source
    assert len(list((tmp_path / "cache" / "reference").glob("*.npz"))) == 3


def test_check_compatible() -> None:
    extractor = _LinearExtractor(dim=4, name="linear")
    check_compatible(_random_reference(4, seed=6), extractor=extractor, resolution=32)  # unknown: dims only
    check_compatible(
        _random_reference(4, seed=6, extractor="linear", resolution=32), extractor=extractor, resolution=32
    )
    with pytest.raises(SkiptuneError, match="5 features but extractor 'linear' gives 4"):
        check_compatible(_random_reference(5, seed=6), extractor=extractor, resolution=32)
    with pytest.raises(SkiptuneError, match="computed with extractor 'other'"):
        check_compatible(_random_reference(4, seed=6, extractor="other"), extractor=extractor, resolution=32)
    with pytest.raises(SkiptuneError, match="16x16 images but the model makes 32x32"):
        check_compatible(_random_reference(4, seed=6, resolution=16), extractor=extractor, resolution=32)
