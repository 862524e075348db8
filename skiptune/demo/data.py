"""Fashion-MNIST, the demo's data: the four idx files of the Debian package ``dataset-fashion-mnist``.

Read with the generic idx reader of :mod:`skiptune.objectives.data`; ``fmnist:train`` / ``fmnist:test``
(the image source the demo registers) and the trainers both come through :func:`load_fashion_mnist`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from skiptune.errors import SkiptuneError
from skiptune.objectives.data import read_idx

FMNIST_ROOT_ENV = "SKIPTUNE_FMNIST_ROOT"
DEFAULT_FMNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
FMNIST_FILES = {"train": "train", "test": "t10k"}


def fmnist_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The Fashion-MNIST folder: ``root``, else ``$SKIPTUNE_FMNIST_ROOT``, else the Debian location."""
    return Path(root or os.environ.get(FMNIST_ROOT_ENV) or DEFAULT_FMNIST_ROOT)


def load_fashion_mnist(
    split: str, *, root: str | os.PathLike[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST ``split`` ('train' or 'test') as (uint8 images [N,1,28,28], int64 labels [N])."""
    if split not in FMNIST_FILES:
        raise SkiptuneError(
            f"unknown Fashion-MNIST split {split!r}; expected one of: {', '.join(FMNIST_FILES)}"
        )
    folder = fmnist_root(root)
    stem = FMNIST_FILES[split]
    image_path = folder / f"{stem}-images-idx3-ubyte.gz"
    label_path = folder / f"{stem}-labels-idx1-ubyte.gz"
    for p in (image_path, label_path):
        if not p.is_file():
            raise SkiptuneError(
                f"Fashion-MNIST file {str(p)!r} not found; install the Debian package dataset-fashion-mnist, "
                f"or point ${FMNIST_ROOT_ENV} (or root=) at a folder holding the four *-ubyte.gz files"
            )
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise SkiptuneError(
            f"Fashion-MNIST files in {str(folder)!r} have shapes {images.shape} and {labels.shape}; "
            "expected images [N,28,28] and labels [N]"
        )
    if images.shape[0] != labels.shape[0]:
        raise SkiptuneError(
            f"Fashion-MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels in {str(folder)!r}"
        )
    if labels.size and int(labels.max()) > 9:
        raise SkiptuneError(
            f"Fashion-MNIST {split} labels in {str(label_path)!r} exceed 9; the file is corrupt"
        )
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
