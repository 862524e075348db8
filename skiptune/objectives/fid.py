"""The objective: Fréchet distance of a skip-tuned sampler's images to reference statistics.

``FDObjective(spec=..., ...).evaluate(schedule)`` samples seeds ``seed_base .. seed_base + n_samples - 1``
(from its ``ObjectiveSpec``) with the schedule applied, accumulates features batch by batch (no image is
kept) and yields ``(samples_so_far, distance)`` at every rung, so a pruner can stop a bad setting early.
Every trial uses the same seeds (common random numbers), and batch size or device never change which
images are made.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from skiptune.errors import EvaluationError, SkiptuneError
from skiptune.objectives.features import FeatureExtractor, create_extractor
from skiptune.objectives.frechet import FeatureStats, frechet_distance
from skiptune.objectives.holdout import BlockDistances, block_bounds, from_block_stats
from skiptune.objectives.reference import ReferenceStats, check_compatible
from skiptune.objectives.spec import ObjectiveSpec
from skiptune.sampling import SAMPLERS, bind_conditioning, generate_images, image_shape
from skiptune.skips import SkipSchedule, skip_tuning

if TYPE_CHECKING:
    from skiptune.objectives.clip_score import ClipScorer


class FDObjective:
    """Fréchet distance between a (skip-tuned) sampler's images and reference statistics.

    ``evaluate`` is a generator: close it (or exhaust it) to restore the network's skips promptly.
    """

    def __init__(
        self,
        *,
        spec: ObjectiveSpec,
        denoiser: torch.nn.Module,
        sampler: str,
        nfe: int,
        extractor: FeatureExtractor,
        reference: ReferenceStats,
        sampler_settings: Any | None = None,
        batch_size: int = 256,
        device: torch.device | str = "cpu",
        progress: bool = True,
    ) -> None:
        sampler_spec = SAMPLERS.get(sampler)
        sampler_spec.steps_for_nfe(nfe)  # a clear error naming valid NFEs, before any work
        self.sampler_settings = sampler_spec.check_settings(sampler_settings)
        if batch_size < 1:
            raise SkiptuneError(f"bad batch size {batch_size}: expected an integer >= 1")
        _check_matches(spec, extractor, reference)
        channels, resolution = image_shape(denoiser)  # a latent model's decoded images
        wanted = getattr(extractor, "input_resolution", None)
        if wanted is not None and wanted != resolution:
            raise SkiptuneError(
                f"extractor {extractor.name!r} takes {wanted}x{wanted} images but the model makes "
                f"{resolution}x{resolution}; choose an extractor that accepts them (e.g. inception-v3-compat)"
            )
        check_compatible(reference, extractor=extractor, resolution=resolution, channels=channels)
        self.spec, self.denoiser, self.sampler, self.nfe = spec, denoiser, sampler, nfe
        self.extractor, self.reference = extractor, reference
        self.n_samples, self.rungs, self.seed_base = spec.n_samples, spec.rungs, spec.seed_base
        self.batch_size, self.device, self.progress = batch_size, torch.device(device), progress

    @classmethod
    def from_spec(
        cls,
        spec: ObjectiveSpec,
        net: torch.nn.Module,
        *,
        sampler: str,
        nfe: int,
        settings: Mapping[str, Any],
        device: torch.device,
        batch_size: int,
    ) -> FDObjective:
        """The objective ``spec`` describes, on ``device``: this machine's extractor and checked reference;
        a text-conditional net bound to the spec's prompts and guidance."""
        return cls(
            spec=spec,
            denoiser=bind_conditioning(net, spec.conditioning, device=device),  # type: ignore[arg-type]
            sampler=sampler,
            nfe=nfe,
            extractor=create_extractor(spec.extractor, device=device),
            reference=spec.checked_reference(),
            sampler_settings=SAMPLERS.get(sampler).settings_from_dict(dict(settings)),
            batch_size=batch_size,
            device=device,
            progress=False,
        )

    def identity(self) -> dict[str, str]:
        """Everything that changes the number (the spec's identity for this sampler and NFE)."""
        settings = self.sampler_settings.to_dict() if hasattr(self.sampler_settings, "to_dict") else {}
        return self.spec.identity(sampler=self.sampler, nfe=self.nfe, settings=settings)

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

    def block_stats(
        self,
        schedule: SkipSchedule,
        *,
        seed_base: int,
        bounds: list[tuple[int, int]],
        clip: ClipScorer | None = None,
        clip_sums: list[float] | None = None,
    ) -> list[FeatureStats]:
        """Feature statistics of seeds ``seed_base + start .. seed_base + stop - 1`` per ``(start, stop)``;
        with ``clip``, each block's sum of CLIP scores (image with its prompt) appended to ``clip_sums``."""
        if seed_base < 0:
            raise SkiptuneError(f"bad held-out seed base {seed_base}: expected a non-negative integer")
        prompts = self.spec.conditioning.prompts if self.spec.conditioning is not None else ()
        if clip is not None and (not prompts or clip_sums is None):
            raise SkiptuneError("the CLIP guard scores text-to-image samples with their prompts; this "
                                "objective has no prompts")  # fmt: skip
        device = getattr(self.extractor, "device", self.device)
        side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        per_block = []
        with skip_tuning(self.denoiser, schedule):
            for start, stop in bounds:
                stats = FeatureStats(self.extractor.feature_dim, device=device)
                seeds, done, clip_sum = range(seed_base + start, seed_base + stop), 0, 0.0
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
                    if clip is not None:
                        chunk = seeds[done : done + batch.shape[0]]
                        texts = [prompts[s % len(prompts)] for s in chunk]
                        clip_sum += float(clip.scores(batch, texts).sum())
                    done += int(batch.shape[0])
                per_block.append(stats)
                if clip_sums is not None:
                    clip_sums.append(clip_sum)
        if side is not None:
            side.synchronize()
        return per_block

    def block_distances(
        self,
        schedule: SkipSchedule,
        *,
        seed_base: int,
        n_samples: int,
        blocks: int,
        clip: ClipScorer | None = None,
    ) -> BlockDistances:
        """Held-out distances of seeds ``seed_base .. seed_base + n_samples - 1`` under ``schedule``: over
        all of them and with each of ``blocks`` contiguous blocks left out (``objectives.holdout``); with
        ``clip``, also each block's sum of CLIP scores (the prompt-alignment guard)."""
        bounds = block_bounds(n_samples, blocks)
        sums: list[float] | None = [] if clip is not None else None
        per_block = self.block_stats(schedule, seed_base=seed_base, bounds=bounds, clip=clip, clip_sums=sums)
        result = from_block_stats(per_block, self._distance, seed_base=seed_base)
        return result if sums is None else replace(result, clip_sums=tuple(sums))

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


def _check_matches(spec: ObjectiveSpec, extractor: FeatureExtractor, reference: ReferenceStats) -> None:
    """The extractor and statistics are the ones the spec names (else its identity would be wrong)."""
    mine = (extractor.name, int(extractor.feature_dim), reference.sha256)
    theirs = (spec.extractor, spec.feature_dim, spec.reference_sha256)
    if mine != theirs:
        raise SkiptuneError(
            f"the objective spec names extractor {theirs[0]!r} ({theirs[1]} features) and reference sha256 "
            f"{theirs[2][:12]}..., but was given {mine[0]!r} ({mine[1]} features) and {mine[2][:12]}...; "
            "build it with ObjectiveSpec.describe(extractor, reference, ...)"
        )
