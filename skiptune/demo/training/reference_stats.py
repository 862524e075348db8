"""Reference statistics of a Fashion-MNIST split in the fmnist-classifier feature space.

The statistics are ``compute_reference``'s (float64 sums, batch by batch), the file ``save_reference``'s:
the demo only says which images and how they are described.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from skiptune.demo.classifier import ClassifierExtractor

if TYPE_CHECKING:  # reference imports torch-fidelity (through frechet): keep it out of module import
    from skiptune.objectives.reference import ReferenceStats


def split_reference(
    extractor: ClassifierExtractor, split: str, *, root: str | None = None, batch_size: int = 1000
) -> ReferenceStats:
    """Statistics of ``split`` (padded to 32x32), described as the bundled file describes them."""
    from skiptune.demo.training.data import load_padded
    from skiptune.objectives.data import TensorSource
    from skiptune.objectives.reference import compute_reference

    images, _ = load_padded(split, root=root)
    source = TensorSource(
        images, description=f"Fashion-MNIST {split} ({images.shape[0]} images, padded to 32x32)"
    )
    return compute_reference(source, extractor, batch_size=batch_size, progress=False, use_cache=False)


def write_split_reference(
    extractor: ClassifierExtractor,
    split: str,
    path: str | Path,
    *,
    root: str | None = None,
    batch_size: int = 1000,
) -> dict[str, Any]:
    """Write ``split``'s statistics as our ``.npz``; returns their metadata, sha256 included."""
    from skiptune.objectives.reference import save_reference

    reference = split_reference(extractor, split, root=root, batch_size=batch_size)
    save_reference(reference, path)
    return reference.metadata()
