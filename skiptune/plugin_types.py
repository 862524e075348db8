"""The types the plugin registries hold: what a feature extractor and an image source are.

They live below ``skiptune.plugins`` (which holds them) and below ``skiptune.objectives`` (which
implements them), so neither imports the other to name them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps uint8 images ``[N,C,H,W]`` (any device) to float32 features ``[N, feature_dim]`` on ``device``."""

    name: str
    feature_dim: int
    input_channels: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...



class ImageSource(Protocol):
    """A finite set of images, read in batches; the fingerprint hashes the delivered pixels' origin."""

    description: str

    def __len__(self) -> int: ...

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]: ...

    def fingerprint(self) -> str: ...
