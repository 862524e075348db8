"""The objective: Fréchet distance of a skip-tuned sampler's images to reference statistics.

``FDObjective(...).evaluate(schedule)`` samples seeds ``seed_base .. seed_base + n_samples - 1`` with the
schedule applied, accumulates features batch by batch (no image is kept) and yields
``(samples_so_far, distance)`` at every rung, so a pruner can stop a bad setting early. Every trial uses
the same seeds (common random numbers), and batch size or device never change which images are made.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from skiptune.errors import EvaluationError, SkiptuneError
from skiptune.objectives.features import FeatureExtractor
from skiptune.objectives.frechet import FeatureStats, frechet_distance
from skiptune.objectives.reference import ReferenceStats, check_compatible
from skiptune.sampling import SAMPLERS, generate_images
from skiptune.skips import SkipSchedule, skip_tuning

if TYPE_CHECKING:
    from skiptune.objectives.holdout import BlockDistances


def check_rungs(rungs: Sequence[int], n_samples: int) -> tuple[int, ...]:
    """Rungs as a tuple: strictly increasing sample counts >= 2, the last equal to ``n_samples``."""
    out = tuple(int(r) for r in rungs)
    if not out or out[0] < 2 or any(b <= a for a, b in itertools.pairwise(out)) or out[-1] != n_samples:
        raise SkiptuneError(
            f"bad rungs {list(out)} for {n_samples} samples: expected strictly increasing sample counts >= 2 "
            f"ending at n_samples, e.g. {max(2, n_samples // 5)},{n_samples}"
        )
    return out


class FDObjective:
    """Fréchet distance between a (skip-tuned) sampler's images and reference statistics.

    ``evaluate`` is a generator: close it (or exhaust it) to restore the network's skips promptly.
    """

    def __init__(
        self,
        *,
        denoiser: torch.nn.Module,
        sampler: str,
        nfe: int,
        extractor: FeatureExtractor,
        reference: ReferenceStats,
        n_samples: int,
        rungs: Sequence[int] | None = None,
        sampler_settings: Any | None = None,
        seed_base: int = 0,
        batch_size: int = 256,
        device: torch.device | str = "cpu",
        progress: bool = True,
    ) -> None:
        spec = SAMPLERS.get(sampler)
        spec.steps_for_nfe(nfe)  # a clear error naming valid NFEs, before any work
        self.sampler_settings = spec.check_settings(sampler_settings)
        if seed_base < 0 or batch_size < 1:
            raise SkiptuneError(f"seed_base {seed_base} must be >= 0 and batch_size {batch_size} >= 1")
        self.rungs = check_rungs(rungs if rungs is not None else [n_samples], n_samples)
        resolution = int(denoiser.img_resolution)  # type: ignore[arg-type]
        wanted = getattr(extractor, "input_resolution", None)
        if wanted is not None and wanted != resolution:
            raise SkiptuneError(
                f"extractor {extractor.name!r} takes {wanted}x{wanted} images but the model makes "
                f"{resolution}x{resolution}; choose an extractor that accepts them (e.g. inception-v3-compat)"
            )
        check_compatible(reference, extractor=extractor, resolution=resolution)
        self.denoiser, self.sampler, self.nfe = denoiser, sampler, nfe
        self.extractor, self.reference = extractor, reference
        self.n_samples, self.seed_base, self.batch_size = n_samples, seed_base, batch_size
        self.device, self.progress = torch.device(device), progress

    def identity(self) -> dict[str, str]:
        """Everything that changes the number (not device or batch size: those never do)."""
        settings = self.sampler_settings.to_dict() if hasattr(self.sampler_settings, "to_dict") else {}
        return {
            "objective": "frechet-distance",
            "extractor": self.extractor.name,
            "feature_dim": str(self.extractor.feature_dim),
            "reference_sha256": self.reference.sha256,
            "n_samples": str(self.n_samples),
            "rungs": ",".join(str(r) for r in self.rungs),
            "seed_base": str(self.seed_base),
            "sampler": self.sampler,
            "sampler_settings": json.dumps(settings, sort_keys=True, default=str),
            "nfe": str(self.nfe),
        }

    def evaluate(self, schedule: SkipSchedule) -> Iterator[tuple[int, float]]:
        """Yield ``(samples_so_far, distance)`` at each rung; NaN/inf raise :class:`EvaluationError`."""
        from tqdm.auto import tqdm

        stats = FeatureStats(
            self.extractor.feature_dim, device=getattr(self.extractor, "device", self.device)
        )
        side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        desc = f"FD rho=({schedule.rho_bottom:g},{schedule.rho_top:g})"
        with (
            skip_tuning(self.denoiser, schedule),
            tqdm(total=self.n_samples, unit="img", desc=desc, disable=not self.progress) as bar,
        ):
            done = 0
            for rung in self.rungs:
                seeds = range(self.seed_base + done, self.seed_base + rung)
                for batch in generate_images(
                    self.denoiser,
                    sampler=self.sampler,
                    nfe=self.nfe,
                    seeds=seeds,
                    batch_size=self.batch_size,
                    device=self.device,
                    settings=self.sampler_settings,
                ):
                    self._extract(batch, stats, side)
                    bar.update(int(batch.shape[0]))
                done = rung
                if side is not None:
                    side.synchronize()
                yield rung, self._distance(stats)

    def block_distances(
        self, schedule: SkipSchedule, *, seed_base: int, n_samples: int, blocks: int
    ) -> BlockDistances:
        """Held-out distances of ``schedule`` on other seeds, in blocks (see ``objectives.holdout``)."""
        from skiptune.objectives.holdout import block_distances

        return block_distances(self, schedule, seed_base=seed_base, n_samples=n_samples, blocks=blocks)

    def _extract(self, batch: torch.Tensor, stats: FeatureStats, side: torch.cuda.Stream | None) -> None:
        """Features of one batch; on CUDA on a side stream, overlapping the next batch's sampling."""
        if side is None:
            stats.update(self.extractor(batch))
            return
        side.wait_stream(torch.cuda.current_stream(self.device))  # the batch is complete before use
        batch.record_stream(side)  # its memory is not reused until the side stream is done with it
        with torch.cuda.stream(side):
            stats.update(self.extractor(batch))

    def _distance(self, stats: FeatureStats) -> float:
        distance = frechet_distance(stats.mean(), stats.cov(), self.reference.mu, self.reference.sigma)
        if not math.isfinite(distance):
            raise EvaluationError(f"the Fréchet distance after {stats.count} samples is {distance}")
        return distance
