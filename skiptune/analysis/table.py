"""Rows of the analysis: per sigma, the baseline's and the tuned pair's losses and their paired ratios."""

from __future__ import annotations

import math
from typing import Any

from skiptune.analysis.losses import PerImageLosses, edm_weight
from skiptune.analysis.ratio import paired_ratio


def comparison_rows(losses: PerImageLosses, index: int) -> list[dict[str, Any]]:
    """One row per sigma comparing schedule ``index`` with schedule 0 (the baseline).

    Means are over images; ``*_ratio`` is mean(tuned) / mean(baseline) with its paired standard error
    (:mod:`skiptune.analysis.ratio`). The EDM weight is the same for both schedules at one sigma, so the
    weighted pixel loss has the raw one's ratio; its means say which sigmas dominate EDM's training loss.
    """
    rows = []
    for k, sigma in enumerate(losses.sigmas):
        pixel = paired_ratio(losses.pixel[index, k], losses.pixel[0, k])
        feature = paired_ratio(losses.feature[index, k], losses.feature[0, k])
        weight = edm_weight(sigma, losses.sigma_data)
        rows.append(
            {
                "sigma": sigma,
                "edm_weight": weight,
                "pixel_baseline": float(losses.pixel[0, k].mean()),
                "pixel_tuned": float(losses.pixel[index, k].mean()),
                "pixel_weighted_baseline": weight * float(losses.pixel[0, k].mean()),
                "pixel_weighted_tuned": weight * float(losses.pixel[index, k].mean()),
                "pixel_ratio": pixel.value,
                "pixel_ratio_se": pixel.se,
                "feature_baseline": float(losses.feature[0, k].mean()),
                "feature_tuned": float(losses.feature[index, k].mean()),
                "feature_ratio": feature.value,
                "feature_ratio_se": feature.se,
                "n_images": pixel.n,
            }
        )
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table of ``comparison_rows`` (ratios as value ± standard error)."""
    head = (
        f"{'sigma':>9}  {'pixel ratio':>17}  {'feature ratio':>17}  {'pixel base':>10}  {'pixel tuned':>11}"
        f"  {'weighted base':>13}  {'feature base':>12}  {'feature tuned':>13}"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['sigma']:>9.4g}  {_pm(r['pixel_ratio'], r['pixel_ratio_se']):>17}  "
            f"{_pm(r['feature_ratio'], r['feature_ratio_se']):>17}  {r['pixel_baseline']:>10.4g}  "
            f"{r['pixel_tuned']:>11.4g}  {r['pixel_weighted_baseline']:>13.4g}  "
            f"{r['feature_baseline']:>12.4g}  {r['feature_tuned']:>13.4g}"
        )
    return "\n".join(lines)


def _pm(value: float, se: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.4f} ± {se:.4f}"
