"""Reference statistics (mu, sigma of real images' features): load, compute, cache, check.

Formats read by :func:`load_reference`:

* our ``.npz``: ``mu``, ``sigma`` plus metadata (``format``, ``count``, ``resolution``, ``extractor``,
  ``source``), written by :func:`save_reference` / ``skiptune stats``;
* EDM's ``.npz`` (``mu``, ``sigma`` only; Inception-v3 pool features, 2048 dims);
* torch-fidelity's cached statistics ``<input>-<extractor>-stat-fid-<layer>.pt`` (a dict of numpy
  ``mu``/``sigma``), read with ``weights_only`` (numpy arrays allowed, no code).

:func:`compute_reference` caches by the source's content fingerprint + the extractor's name and weights,
under ``$SKIPTUNE_CACHE`` or ``~/.cache/skiptune``, written atomically (temp file + rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skiptune.errors import SkiptuneError
from skiptune.io import atomic_write, check_output_dir, load_npz, load_weights
from skiptune.objectives.data import ImageSource
from skiptune.objectives.features import FeatureExtractor
from skiptune.objectives.frechet import FeatureStats
from skiptune.plugins import REFERENCES

REFERENCE_FORMAT = "skiptune-reference-v1"
CACHE_ENV = "SKIPTUNE_CACHE"
_FIDELITY_NAME = re.compile(r"^(?P<stem>.+)-stat-fid-(?P<layer>[A-Za-z0-9_]+)\.pt$")
_FIDELITY_EXTRACTORS = {
    "inception-v3-compat",
    "dinov2-vit-s-14",
    "dinov2-vit-b-14",
    "dinov2-vit-l-14",
    "dinov2-vit-g-14",
    "clip-vit-b-32",
    "vgg16",
}


@dataclass(frozen=True, eq=False)
class ReferenceStats:
    """Gaussian statistics of a reference set's features; ``sha256`` hashes mu and sigma (float64)."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int | None = None
    resolution: int | None = None
    extractor: str | None = None  # None: unknown (e.g. EDM's files, which hold no metadata)
    source: str = ""
    channels: int | None = None  # image channels the statistics were computed from; None: not recorded
    feature_dim: int = field(init=False)
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        mu = np.ascontiguousarray(self.mu, dtype="<f8")
        sigma = np.ascontiguousarray(self.sigma, dtype="<f8")
        d = mu.shape[0] if mu.ndim == 1 else -1
        if mu.shape != (d,) or sigma.shape != (d, d):
            raise SkiptuneError(
                f"bad reference statistics: mu {mu.shape}, sigma {sigma.shape}; expected [D], [D,D]"
            )
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise SkiptuneError(f"reference statistics {self.source!r} contain NaN/inf; recompute them")
        digest = hashlib.sha256(f"{d};".encode() + mu.tobytes() + sigma.tobytes()).hexdigest()
        for name, value in (("mu", mu), ("sigma", sigma), ("feature_dim", d), ("sha256", digest)):
            object.__setattr__(self, name, value)

    def metadata(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "resolution": self.resolution,
            "extractor": self.extractor,
            "source": self.source,
            "channels": self.channels,
            "feature_dim": self.feature_dim,
            "sha256": self.sha256,
        }


# -------------------------------------------------------------------------------------------- files


def save_reference(reference: ReferenceStats, path: str | os.PathLike[str]) -> None:
    """Write our ``.npz`` (mu, sigma + metadata), atomically."""
    meta = {
        k: v
        for k, v in (
            ("count", reference.count),
            ("resolution", reference.resolution),
            ("extractor", reference.extractor),
            ("channels", reference.channels),
        )
        if v is not None
    }
    arrays: dict[str, Any] = {
        "mu": reference.mu,
        "sigma": reference.sigma,
        "format": np.str_(REFERENCE_FORMAT),
        "source": np.str_(reference.source),
        **{k: np.asarray(v) for k, v in meta.items()},
    }
    atomic_write(path, lambda f: np.savez(f, **arrays), what="reference statistics")


def resolve_reference(name_or_path: str | os.PathLike[str]) -> Path:
    """A registered reference's name (``skiptune.plugins.REFERENCES``) or a path, as a path here."""
    name = str(name_or_path)
    return REFERENCES.get(name)() if name in REFERENCES else Path(name_or_path)


def load_reference(path: str | os.PathLike[str]) -> ReferenceStats:
    """Reference statistics from our ``.npz``, EDM's ``.npz`` or torch-fidelity's cached ``.pt``.

    ``path`` may also name a registered reference (e.g. a plugin's bundled statistics).
    """
    path = resolve_reference(path)
    if not path.is_file():
        raise SkiptuneError(
            f"reference statistics {str(path)!r} not found (registered names: "
            f"{', '.join(REFERENCES.names()) or 'none'}); compute them with "
            "`skiptune stats --source SOURCE --extractor NAME --out FILE.npz`"
        )
    if path.suffix == ".npz":
        return _load_npz(path)
    if path.suffix == ".pt":
        return _load_fidelity(path)
    raise SkiptuneError(
        f"unknown reference statistics format {str(path)!r}; "
        "expected .npz (skiptune or EDM) or torch-fidelity's .pt"
    )


def _load_npz(path: Path) -> ReferenceStats:
    arrays = load_npz(path, what="reference statistics")
    if "mu" not in arrays or "sigma" not in arrays:
        raise SkiptuneError(
            f"{str(path)!r} has arrays {sorted(arrays)}; reference statistics need 'mu' and 'sigma'"
        )
    fmt = str(arrays["format"]) if "format" in arrays else None
    if fmt not in (None, REFERENCE_FORMAT):
        raise SkiptuneError(f"{str(path)!r} has format {fmt!r}; this skiptune reads {REFERENCE_FORMAT!r}")

    def meta(key: str) -> Any:
        return arrays[key].item() if key in arrays else None

    return ReferenceStats(
        mu=arrays["mu"],
        sigma=arrays["sigma"],
        count=meta("count"),
        resolution=meta("resolution"),
        extractor=meta("extractor"),
        source=str(meta("source") or path),
        channels=meta("channels"),
    )


def _np_reconstruct() -> Any:
    try:  # numpy >= 2 moved the pickling helper; torch's allow-list needs the very function object
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


def _load_fidelity(path: Path) -> ReferenceStats:
    safe = [np.ndarray, np.dtype, np.dtypes.Float32DType, np.dtypes.Float64DType, _np_reconstruct()]
    data = load_weights(path, what="torch-fidelity statistics", safe_globals=safe)
    if not isinstance(data, dict) or "mu" not in data or "sigma" not in data:
        raise SkiptuneError(
            f"{str(path)!r} is not torch-fidelity FID statistics (a dict with 'mu' and 'sigma')"
        )
    # torch-fidelity names the file <input>-<extractor>-stat-fid-<layer>.pt; the input name may hold dashes
    m = _FIDELITY_NAME.match(path.name)
    stem = m.group("stem") if m else ""
    extractor = next(
        (e for e in sorted(_FIDELITY_EXTRACTORS, key=len, reverse=True) if stem.endswith(f"-{e}")), None
    )
    return ReferenceStats(
        mu=np.asarray(data["mu"]), sigma=np.asarray(data["sigma"]), extractor=extractor, source=str(path)
    )


# -------------------------------------------------------------------------------------- compute


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "skiptune")


def extractor_fingerprint(extractor: FeatureExtractor) -> str:
    """sha256 over the extractor's name and its module's state dict (weights change the features)."""
    h = hashlib.sha256(extractor.name.encode())
    module = getattr(extractor, "module", None) or getattr(extractor, "model", None)
    if isinstance(module, torch.nn.Module):
        for key, value in module.state_dict().items():
            h.update(f"{key}:{value.dtype}:{tuple(value.shape)};".encode())
            h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def compute_reference(
    source: ImageSource,
    extractor: FeatureExtractor,
    *,
    batch_size: int = 256,
    progress: bool = True,
    use_cache: bool = True,
) -> ReferenceStats:
    """Statistics of ``source``'s images in ``extractor``'s feature space, cached by content."""
    key = hashlib.sha256(
        json.dumps(
            {
                "format": REFERENCE_FORMAT,
                "source": source.fingerprint(),
                "extractor": extractor_fingerprint(extractor),
            }
        ).encode()
    ).hexdigest()
    cached = cache_dir() / "reference" / f"{key}.npz"
    if use_cache and cached.is_file():
        return _load_npz(cached)
    if use_cache:  # an unwritable cache fails now, not after the features of every image
        check_output_dir(cached.parent, what=f"the statistics cache (${CACHE_ENV})")
    stats, (channels, resolution) = _accumulate(source, extractor, batch_size=batch_size, progress=progress)
    reference = ReferenceStats(
        mu=stats.mean(),
        sigma=stats.cov(),
        count=stats.count,
        resolution=resolution,
        extractor=extractor.name,
        source=source.description,
        channels=channels,
    )
    if use_cache:
        save_reference(reference, cached)
    return reference


def _accumulate(
    source: ImageSource, extractor: FeatureExtractor, *, batch_size: int, progress: bool
) -> tuple[FeatureStats, tuple[int, int]]:
    """Feature sums of every image, and the (channels, resolution) of the images."""
    from tqdm.auto import tqdm

    stats = FeatureStats(extractor.feature_dim, device=getattr(extractor, "device", "cpu"))
    shape = (0, 0)
    with tqdm(
        total=len(source), unit="img", desc=f"features ({extractor.name})", disable=not progress
    ) as bar:
        for batch in source.batches(batch_size):
            shape = (int(batch.shape[1]), int(batch.shape[-1]))
            stats.update(extractor(batch))
            bar.update(int(batch.shape[0]))
    return stats, shape


def check_compatible(
    reference: ReferenceStats, *, extractor: FeatureExtractor, resolution: int, channels: int | None = None
) -> None:
    """Raise before any sampling when ``reference`` cannot be compared with this extractor and image shape.

    ``channels``: the model's image channels. They must be those the statistics were computed from
    (recorded by ``skiptune stats``) or, for files that do not record them, those the extractor takes
    (greyscale is repeated to RGB for a 3-channel extractor, as EDM's fid.py does): a 3-channel model
    scored against greyscale statistics measures the colour, not the model.
    """
    fix = (
        f"recompute them with `skiptune stats --source SOURCE --extractor {extractor.name} "
        f"--resolution {resolution} --out FILE.npz`"
    )
    if reference.feature_dim != extractor.feature_dim:
        raise SkiptuneError(
            f"reference statistics {reference.source!r} have {reference.feature_dim} features but extractor "
            f"{extractor.name!r} gives {extractor.feature_dim}; {fix}"
        )
    if reference.extractor is not None and reference.extractor != extractor.name:
        raise SkiptuneError(
            f"reference statistics {reference.source!r} were computed with extractor "
            f"{reference.extractor!r}, "
            f"not {extractor.name!r}; {fix}"
        )
    if channels is not None:
        _check_channels(reference, extractor=extractor, channels=channels)
    if reference.resolution is not None and reference.resolution != resolution:
        raise SkiptuneError(
            f"reference statistics {reference.source!r} are of {reference.resolution}x{reference.resolution} "
            f"images but the model makes {resolution}x{resolution}; {fix}"
        )


def _check_channels(reference: ReferenceStats, *, extractor: FeatureExtractor, channels: int) -> None:
    if reference.channels is not None:
        expected, basis = reference.channels, f"reference statistics {reference.source!r} are of"
    else:
        expected, basis = extractor.input_channels, f"extractor {extractor.name!r} takes"
        if (channels, expected) == (1, 3):
            return  # greyscale repeated to RGB
    if channels != expected:
        raise SkiptuneError(
            f"the model makes {channels}-channel images but {basis} {expected}-channel images; compute "
            f"statistics of {channels}-channel images with `skiptune stats --source SOURCE --extractor "
            f"{extractor.name} --out FILE.npz` (or use a model of {expected}-channel images)"
        )
