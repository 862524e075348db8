"""From seeds to images: initial noise, labels or text conditions, a registered sampler, decoding of
latents (once per batch, after the sampler and before anything else sees the samples), EDM's uint8
quantisation."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from skiptune.errors import EvaluationError, SkiptuneError
from skiptune.sampling.contract import Denoiser, DenoiserLike, as_denoiser
from skiptune.sampling.noise import PerSampleGenerator
from skiptune.sampling.registry import SAMPLERS
from skiptune.sampling.schedule import EDMSchedule

_SEEDS_SHOWN = 8


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """EDM's quantisation of images in [-1, 1]: ``(x * 127.5 + 128).clip(0, 255).to(torch.uint8)``."""
    return (x * 127.5 + 128).clip(0, 255).to(torch.uint8)


def _labels(
    denoiser: Denoiser, rng: PerSampleGenerator, class_label: int | None, device: torch.device
) -> torch.Tensor | None:
    """One-hot labels, uniform per sample from its own generator; ``class_label`` fixes them all."""
    label_dim = int(denoiser.label_dim)
    if not label_dim:
        if class_label is not None:
            raise SkiptuneError(f"class label {class_label} given, but the network is unconditional")
        return None
    # Drawn even when fixed, so a sample's later noise does not depend on the choice (as EDM does).
    index = rng.randint(label_dim, device=device)
    if class_label is not None:
        if not 0 <= class_label < label_dim:
            raise SkiptuneError(f"class label {class_label} out of range: expected 0..{label_dim - 1}")
        index = torch.full_like(index, class_label)
    return torch.nn.functional.one_hot(index, label_dim).to(torch.float32)


def image_shape(denoiser: DenoiserLike) -> tuple[int, int]:
    """(channels, resolution) of the images a denoiser's samples become: the decoded images of a latent
    model (one with ``decode``), else its samples themselves."""
    if callable(getattr(denoiser, "decode", None)):
        shape: Any = denoiser  # a latent model states the decoded image size
        return int(shape.image_channels), int(shape.image_resolution)
    net = as_denoiser(denoiser)
    return int(net.img_channels), int(net.img_resolution)


def _conditions(
    net: Denoiser, rng: PerSampleGenerator, class_label: int | None, device: torch.device
) -> torch.Tensor | None:
    """Each sample's condition: text conditions of a prompt-bound net by seed, else class labels."""
    by_seed = getattr(net, "condition_for_seeds", None)
    if by_seed is None:
        return _labels(net, rng, class_label, device)
    if class_label is not None:
        raise SkiptuneError(f"class label {class_label} given, but the network is conditioned on prompts")
    return by_seed(rng.seeds, device=device)  # type: ignore[no-any-return]


def sample_batch(
    denoiser: DenoiserLike,
    *,
    sampler: str,
    nfe: int,
    seeds: Sequence[int],
    device: torch.device | str,
    settings: object | None = None,
    class_labels: int | None = None,
    schedule: EDMSchedule | None = None,
) -> torch.Tensor:
    """float64 samples ``[len(seeds), C, H, W]`` on ``device`` (images roughly in [-1, 1], or latents of
    a latent model: see :func:`decode`), one batch, no checks.

    ``class_labels`` fixes the class of every sample (conditional nets); ``None`` draws each sample's
    class from its own generator. A prompt-bound net conditions sample ``i`` on its seed's prompt.
    """
    net = as_denoiser(denoiser)
    spec = SAMPLERS.get(sampler)
    steps = spec.steps_for_nfe(nfe)
    settings = spec.check_settings(settings)
    device = torch.device(device)
    sigmas = (schedule or EDMSchedule()).sigmas(net, steps, device=device)
    rng = PerSampleGenerator(seeds)
    res, ch = int(net.img_resolution), int(net.img_channels)
    latents = rng.randn([ch, res, res], device=device)
    labels = _conditions(net, rng, class_labels, device)
    with torch.inference_mode():
        x = latents.to(torch.float64) * sigmas[0]
        return spec.fn(net, x, sigmas, class_labels=labels, noise=rng.randn_like, settings=settings)


def generate_images(
    denoiser: DenoiserLike,
    *,
    sampler: str,
    nfe: int,
    seeds: Sequence[int],
    batch_size: int,
    device: torch.device | str,
    settings: object | None = None,
    class_labels: int | None = None,
    schedule: EDMSchedule | None = None,
) -> Iterator[torch.Tensor]:
    """uint8 ``[n, C, H, W]`` batches on ``device``, in seed order; sample ``i`` depends on ``seeds[i]`` only.

    A latent model's samples are decoded here, batch by batch, never inside the sampler.

    Past batches are not kept. Non-finite samples raise :class:`EvaluationError` naming their seeds.
    """
    if batch_size < 1:
        raise SkiptuneError(f"batch size {batch_size} must be >= 1")
    seeds = [int(s) for s in seeds]
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start : start + batch_size]
        x = sample_batch(
            denoiser, sampler=sampler, nfe=nfe, seeds=chunk, device=device,
            settings=settings, class_labels=class_labels, schedule=schedule,
        )  # fmt: skip
        _check_finite(x, chunk, sampler=sampler, nfe=nfe)
        x = decode(denoiser, x)
        _check_finite(x, chunk, sampler=sampler, nfe=nfe)
        yield to_uint8(x)


def decode(denoiser: DenoiserLike, samples: torch.Tensor) -> torch.Tensor:
    """Images from a batch of samples: the net's ``decode`` (a latent model's VAE), else the samples."""
    fn = getattr(denoiser, "decode", None)
    if fn is None:
        return samples
    with torch.inference_mode():
        return fn(samples.to(torch.float32)).to(torch.float64)  # type: ignore[no-any-return]


def _check_finite(x: torch.Tensor, seeds: Sequence[int], *, sampler: str, nfe: int) -> None:
    bad = (~torch.isfinite(x.flatten(1)).all(dim=1)).nonzero().flatten().tolist()
    if bad:
        shown = ", ".join(str(seeds[k]) for k in bad[:_SEEDS_SHOWN])
        more = f" and {len(bad) - _SEEDS_SHOWN} more" if len(bad) > _SEEDS_SHOWN else ""
        raise EvaluationError(
            f"{len(bad)} of {len(seeds)} samples are NaN/inf (sampler {sampler}, NFE {nfe}); "
            f"seeds {shown}{more}. Check the network and skip coefficients."
        )
