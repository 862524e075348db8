"""Fashion-MNIST as the trainers use it: padded to 32x32 uint8, and the [-1, 1] scaling of EDM."""

from __future__ import annotations

import torch

from skiptune.demo.data import load_fashion_mnist
from skiptune.objectives.data import pad_to

RESOLUTION = 32


def load_padded(split: str, *, root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images [N,1,32,32], int64 labels [N]) of ``split``, centred on a black 32x32 canvas."""
    images, labels = load_fashion_mnist(split, root=root)
    return pad_to(images, RESOLUTION), labels


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 [-1, 1], the range EDM's sigma_data = 0.5 assumes."""
    return images.float() / 127.5 - 1.0


def random_xflip(images: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2 (garments are left-right symmetric classes)."""
    flip = torch.rand([images.shape[0], 1, 1, 1], device=images.device, generator=generator) < 0.5
    return torch.where(flip, images.flip(-1), images)


class EpochSampler:
    """Batches of indices from a fresh random permutation each epoch, drawn on the data's device."""

    def __init__(self, n: int, batch_size: int, *, device: torch.device, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.device, self.generator = n, batch_size, device, generator
        self._perm = torch.empty(0, dtype=torch.long, device=device)
        self._pos = 0

    def next(self) -> torch.Tensor:
        if self._pos + self.batch_size > self._perm.numel():
            self._perm = torch.randperm(self.n, device=self.device, generator=self.generator)
            self._pos = 0
        idx = self._perm[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return idx
