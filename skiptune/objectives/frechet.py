"""Streaming feature statistics and the Fréchet distance between two Gaussians.

:class:`FeatureStats` keeps float64 sums (count, sum, sum of outer products), so batches and shards
merge *exactly* in any order and batch size never changes the result beyond float64 rounding.
The distance itself is torch-fidelity's statistics-to-metric step (eigenvalues of sigma1 @ sigma2).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from skiptune.errors import SkiptuneError


class FeatureStats:
    """Running float64 count / sum / sum of outer products of ``[N, D]`` features on one device."""

    def __init__(self, feature_dim: int, *, device: torch.device | str = "cpu") -> None:
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be positive, got {feature_dim}")
        self.feature_dim = feature_dim
        self.count = 0
        self.sum = torch.zeros(feature_dim, dtype=torch.float64, device=device)
        self.sum_outer = torch.zeros(feature_dim, feature_dim, dtype=torch.float64, device=device)

    def update(self, features: torch.Tensor) -> None:
        """Add a batch of features ``[N, D]`` (any float dtype; accumulated in float64)."""
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"expected features [N, {self.feature_dim}], got {tuple(features.shape)}")
        f = features.to(device=self.sum.device, dtype=torch.float64)
        self.count += int(f.shape[0])
        self.sum += f.sum(0)
        self.sum_outer += f.T @ f

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add another shard's statistics into this one (exact: sums add); returns ``self``."""
        if other.feature_dim != self.feature_dim:
            raise ValueError(
                f"cannot merge statistics of dimension {other.feature_dim} into {self.feature_dim}"
            )
        self.count += other.count
        self.sum += other.sum.to(self.sum.device)
        self.sum_outer += other.sum_outer.to(self.sum.device)
        return self

    def mean(self) -> np.ndarray:
        if self.count < 1:
            raise SkiptuneError("no features accumulated; the mean needs at least one sample")
        return (self.sum / self.count).cpu().numpy()

    def cov(self) -> np.ndarray:
        """Unbiased covariance (divides by count - 1), as ``np.cov(features, rowvar=False)``."""
        if self.count < 2:
            raise SkiptuneError(f"covariance needs at least 2 samples, have {self.count}")
        mu = self.sum / self.count
        cov = (self.sum_outer - self.count * torch.outer(mu, mu)) / (self.count - 1)
        return ((cov + cov.T) / 2).cpu().numpy()  # exact symmetry despite rounding

    def to_npz(self, path: str | os.PathLike[str]) -> None:
        np.savez(
            Path(path),
            count=np.int64(self.count),
            sum=self.sum.cpu().numpy(),
            sum_outer=self.sum_outer.cpu().numpy(),
        )

    @classmethod
    def from_npz(cls, path: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> FeatureStats:
        with np.load(Path(path), allow_pickle=False) as data:
            missing = {"count", "sum", "sum_outer"} - set(data.files)
            if missing:
                raise SkiptuneError(f"{str(path)!r} is not a FeatureStats file: missing {sorted(missing)}")
            stats = cls(int(data["sum"].shape[0]), device=device)
            stats.count = int(data["count"])
            stats.sum.copy_(torch.from_numpy(data["sum"].astype(np.float64)))
            stats.sum_outer.copy_(torch.from_numpy(data["sum_outer"].astype(np.float64)))
        return stats


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance ``|mu1-mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``, computed in float64."""
    m1, m2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    s1, s2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    d = m1.shape[0] if m1.ndim == 1 else -1
    if m1.shape != (d,) or m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise SkiptuneError(
            f"mismatched statistics: mu {m1.shape} / {m2.shape}, sigma {s1.shape} / {s2.shape}; "
            "both sides must come from the same feature extractor (same dimension)"
        )
    # imported here: the statistics alone must not pull in torch-fidelity (and torchvision)
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    metric = fid_statistics_to_metric({"mu": m1, "sigma": s1}, {"mu": m2, "sigma": s2}, verbose=False)
    return float(metric[KEY_METRIC_FID])
