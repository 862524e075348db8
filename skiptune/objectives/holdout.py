"""Held-out blocks: the distance over all samples and with each block of seeds left out.

A validation job samples ``n_samples`` seeds that no search trial used, split into ``blocks`` contiguous
blocks of seeds. Feature statistics are sums, so the statistics of "every block but b" are the total minus
block b (float64): one pass over the images gives the full distance and the ``blocks`` leave-one-out
distances a delete-a-group jackknife needs (``skiptune.search.experiment.validation`` turns those into a
standard error). Seeds, not batches, define the blocks, so batch size and device never change them.
This module is the blocks' arithmetic; ``FDObjective.block_distances`` (``fid.py``) samples them.
With the prompt-alignment guard a job also records each block's sum of CLIP scores (``clip_sums``); the
mean score over all samples and without each block follow from those sums and the block sizes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from skiptune.errors import SkiptuneError
from skiptune.objectives.frechet import FeatureStats


@dataclass(frozen=True)
class BlockDistances:
    """One schedule's held-out distances: over all samples, and without each block (same block order)."""

    value: float
    leave_one_out: tuple[float, ...]
    n_samples: int
    seed_base: int
    clip_sums: tuple[float, ...] | None = None  # per block: the sum of its samples' CLIP scores (guard on)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "value": self.value,
            "leave_one_out": list(self.leave_one_out),
            "n_samples": self.n_samples,
            "seed_base": self.seed_base,
        }
        if self.clip_sums is not None:
            out["clip_sums"] = list(self.clip_sums)
        return out

    def clip_means(self) -> tuple[float, tuple[float, ...]] | None:
        """The mean CLIP score over all samples and without each block (None: not recorded)."""
        if self.clip_sums is None:
            return None
        sizes = [stop - start for start, stop in block_bounds(self.n_samples, len(self.clip_sums))]
        total = sum(self.clip_sums)
        rest = tuple((total - s) / (self.n_samples - n) for s, n in zip(self.clip_sums, sizes, strict=True))
        return total / self.n_samples, rest

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BlockDistances:
        return cls(
            value=float(data["value"]),
            leave_one_out=tuple(float(v) for v in data["leave_one_out"]),
            n_samples=int(data["n_samples"]),
            seed_base=int(data["seed_base"]),
            clip_sums=tuple(float(v) for v in data["clip_sums"]) if "clip_sums" in data else None,
        )


def block_bounds(n_samples: int, blocks: int) -> list[tuple[int, int]]:
    """``blocks`` contiguous ``[start, stop)`` offsets covering ``range(n_samples)``, sizes within 1."""
    if blocks < 2 or n_samples < 2 * blocks:
        raise SkiptuneError(
            f"bad held-out split: {n_samples} samples in {blocks} blocks; expected at least 2 blocks of "
            f"at least 2 samples each, e.g. {max(20, 2 * blocks)} samples in 10 blocks"
        )
    edges = [round(i * n_samples / blocks) for i in range(blocks + 1)]
    return list(itertools.pairwise(edges))


def _without(total: FeatureStats, block: FeatureStats) -> FeatureStats:
    rest = FeatureStats(total.feature_dim, device=total.sum.device)
    rest.count = total.count - block.count
    rest.sum = total.sum - block.sum
    rest.sum_outer = total.sum_outer - block.sum_outer
    return rest


def from_block_stats(
    per_block: list[FeatureStats], distance: Callable[[FeatureStats], float], *, seed_base: int
) -> BlockDistances:
    """The full and leave-one-block-out distances of blocks' statistics."""
    total = FeatureStats(per_block[0].feature_dim, device=per_block[0].sum.device)
    for stats in per_block:
        total.merge(stats)
    return BlockDistances(
        value=distance(total),
        leave_one_out=tuple(distance(_without(total, b)) for b in per_block),
        n_samples=total.count,
        seed_base=seed_base,
    )
