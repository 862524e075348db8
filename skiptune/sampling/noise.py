"""Common random numbers: every sample draws from its own generator, seeded by its seed alone.

Each generator lives on the CPU and draws are moved to the target device afterwards: CUDA and CPU
generators produce different streams, so drawing on the CPU makes sample ``i`` the same on every
device, batch size and split of seeds across workers (the network's own arithmetic aside). Per-step
noise is small next to a network evaluation, so the host-side draw is cheap.

The order of draws per sample is fixed: initial noise, class label, then the sampler's noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from skiptune.seeds import SEED_LIMIT  # as EDM's generate.py: seeds are reduced to 32 bits


class PerSampleGenerator:
    """A stack of ``torch.Generator`` objects, one per seed; row ``k`` of every draw uses seed ``k``."""

    def __init__(self, seeds: Sequence[int]) -> None:
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator("cpu").manual_seed(s % SEED_LIMIT) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(
        self, shape: Sequence[int], *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """Standard normal ``[len(seeds), *shape]``."""
        rows = [torch.randn(tuple(shape), generator=g, dtype=dtype) for g in self.generators]
        return torch.stack(rows).to(device)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Standard normal shaped like ``x`` (batch dimension = number of seeds); a sampler's ``noise``."""
        if x.shape[0] != len(self):
            raise ValueError(f"batch of {x.shape[0]} samples drawn from {len(self)} per-sample generators")
        return self.randn(x.shape[1:], dtype=x.dtype, device=x.device)

    def randint(self, high: int, *, device: torch.device | str = "cpu") -> torch.Tensor:
        """One integer in ``[0, high)`` per sample, int64 ``[len(seeds)]``."""
        rows = [torch.randint(high, (1,), generator=g) for g in self.generators]
        return torch.cat(rows).to(device)
