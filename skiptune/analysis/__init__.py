"""Why Skip-Tuning works, measured: per-noise-level denoising losses in pixel and feature space.

``analyze(net, images, schedules=..., extractor=...)`` compares skip schedules with the baseline (1, 1)
on the same real images and noise at each sigma of a grid, and suggests the sigma window where the
feature-space loss falls. One concept per module: ``grid`` (noise levels), ``losses`` (per-image
losses), ``ratio`` (paired ratio estimator), ``table`` (rows), ``window`` (suggested window), ``plot``
(PNG), ``study`` (a study's pair), ``run`` (the composition).
"""

from __future__ import annotations

from skiptune.analysis.grid import DEFAULT_POINTS, parse_sigmas, sigma_grid, sigma_range
from skiptune.analysis.losses import PerImageLosses, edm_weight, image_noise, per_image_losses
from skiptune.analysis.ratio import Ratio, paired_ratio
from skiptune.analysis.run import BASELINE, Analysis, Comparison, analyze, first_images
from skiptune.analysis.window import DEFAULT_Z, SigmaWindow, significant_runs, suggest_window

__all__ = [
    "BASELINE",
    "DEFAULT_POINTS",
    "DEFAULT_Z",
    "Analysis",
    "Comparison",
    "PerImageLosses",
    "Ratio",
    "SigmaWindow",
    "analyze",
    "edm_weight",
    "first_images",
    "image_noise",
    "paired_ratio",
    "parse_sigmas",
    "per_image_losses",
    "sigma_grid",
    "sigma_range",
    "significant_runs",
    "suggest_window",
]
