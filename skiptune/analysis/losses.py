"""Per-image denoising losses at fixed noise levels, in pixel space and in an extractor's feature space.

For a real image x (uint8, scaled to [-1, 1] as the denoiser sees data), a noise image n and a noise
level sigma, with the network D under a skip schedule::

    pixel(x, sigma)    = mean over pixels of (D(x + sigma n; sigma) - x)^2
    weighted(x, sigma) = lambda(sigma) * pixel(x, sigma)
    lambda(sigma)      = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2        (EDM's loss weight)
    feature(x, sigma) = || phi(q(D(x + sigma n; sigma))) - phi(x) ||^2

``q`` is EDM's quantisation to uint8 (the images the objective's extractor phi sees when it scores
samples) and phi is that extractor. Common random numbers: image i always has the noise of its own
generator seeded ``seed + i`` (at every sigma and under every schedule), so the schedules are compared
on the same images and the same noise, and batch size and device do not change which noise is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from skiptune.errors import SkiptuneError
from skiptune.objectives.features import FeatureExtractor
from skiptune.sampling.generate import to_uint8
from skiptune.sampling.noise import PerSampleGenerator
from skiptune.skips import SkipSchedule, skip_tuning


def edm_weight(sigma: float, sigma_data: float) -> float:
    """EDM's loss weight lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


@dataclass(frozen=True)
class PerImageLosses:
    """float64 ``[schedule, sigma, image]`` losses; schedule 0 is the baseline the others are compared to."""

    schedules: tuple[SkipSchedule, ...]
    sigmas: tuple[float, ...]
    sigma_data: float
    pixel: np.ndarray
    feature: np.ndarray

    @property
    def weighted_pixel(self) -> np.ndarray:
        """``pixel`` times EDM's weight of each sigma (what EDM's training loss averages)."""
        weights = np.array([edm_weight(s, self.sigma_data) for s in self.sigmas])
        return self.pixel * weights[None, :, None]


def image_noise(seeds: Sequence[int], shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """Standard normal noise ``[len(seeds), *shape]``, row k from the generator of ``seeds[k]`` alone."""
    return PerSampleGenerator(seeds).randn(shape, device=device)


def per_image_losses(
    net: torch.nn.Module,
    images: torch.Tensor,
    *,
    schedules: Sequence[SkipSchedule],
    sigmas: Sequence[float],
    extractor: FeatureExtractor,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> PerImageLosses:
    """Pixel and feature losses of every image at every sigma under every schedule (see the module doc)."""
    _check_inputs(net, images, schedules, sigmas, batch_size)
    device = torch.device(device)
    n = int(images.shape[0])
    pixel = np.zeros((len(schedules), len(sigmas), n))
    feature = np.zeros_like(pixel)
    for start in range(0, n, batch_size):
        batch = images[start : start + batch_size].to(device)
        x = batch.float() / 127.5 - 1.0
        noise = image_noise(range(seed + start, seed + start + len(batch)), x.shape[1:], device)
        phi_x = extractor(batch).double()
        for s, schedule in enumerate(schedules):
            with skip_tuning(net, schedule):
                for k, sigma in enumerate(sigmas):
                    denoised = _denoise(net, x + sigma * noise, sigma)
                    rows = slice(start, start + len(batch))
                    pixel[s, k, rows] = ((denoised.double() - x.double()) ** 2).flatten(1).mean(1).cpu()
                    phi_d = extractor(to_uint8(denoised)).double()
                    feature[s, k, rows] = ((phi_d - phi_x) ** 2).sum(1).cpu()
    return PerImageLosses(
        schedules=tuple(schedules), sigmas=tuple(float(s) for s in sigmas),
        sigma_data=float(getattr(net, "sigma_data", 0.5)), pixel=pixel, feature=feature,
    )  # fmt: skip


def _denoise(net: torch.nn.Module, noisy: torch.Tensor, sigma: float) -> torch.Tensor:
    sigma_vec = torch.full((noisy.shape[0],), float(sigma), device=noisy.device)
    with torch.no_grad():
        out = net(noisy, sigma_vec)
    if not torch.isfinite(out).all():
        raise SkiptuneError(f"the network returned NaN/inf at sigma {sigma:g}; check the model and pair")
    return out.float()


def _check_inputs(
    net: torch.nn.Module,
    images: torch.Tensor,
    schedules: Sequence[SkipSchedule],
    sigmas: Sequence[float],
    batch_size: int,
) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[0] < 2:
        raise SkiptuneError(
            f"expected at least 2 uint8 images [N,C,H,W], got {images.dtype} {tuple(images.shape)}"
        )
    res, channels = int(getattr(net, "img_resolution", 0)), int(getattr(net, "img_channels", 0))
    if tuple(images.shape[1:]) != (channels, res, res):
        raise SkiptuneError(
            f"images are {tuple(images.shape[1:])} (C,H,W) but the model takes ({channels}, {res}, {res}); "
            "use images of the model's data set (smaller ones are padded to its resolution)"
        )
    if int(getattr(net, "label_dim", 0)):
        raise SkiptuneError(
            "the analysis needs an unconditional model (real images carry no class labels for it); "
            f"this one has label_dim {int(getattr(net, 'label_dim', 0))}"
        )
    if not schedules or not sigmas or batch_size < 1:
        raise SkiptuneError(
            f"need schedules, sigmas and a positive batch size, got {len(schedules)} schedules, "
            f"{len(sigmas)} sigmas, batch size {batch_size}"
        )
