"""The analysis as a PNG: pixel and feature loss ratios (tuned / baseline) against sigma, window shaded."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from skiptune.analysis.run import Analysis


def plot_analysis(analysis: Analysis, path: str | Path, *, title: str = "") -> Path:
    """One panel per tuned schedule: both ratio curves with ±z standard-error bands on a log sigma axis,
    the suggested window shaded green and the other significant runs grey."""
    from skiptune.report import _pyplot  # the project's one matplotlib set-up (Agg backend)

    plt = _pyplot()
    panels = analysis.comparisons
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 3.6 * len(panels)), squeeze=False)
    for ax, comparison in zip(axes[:, 0], panels):
        sigmas = [r["sigma"] for r in comparison.rows]
        for key, colour in (("pixel", "tab:blue"), ("feature", "tab:red")):
            ratio = [r[f"{key}_ratio"] for r in comparison.rows]
            se = [analysis.z * r[f"{key}_ratio_se"] for r in comparison.rows]
            ax.plot(sigmas, ratio, "o-", color=colour, markersize=3, label=f"{key} loss ratio")
            ax.fill_between(
                sigmas, [v - e for v, e in zip(ratio, se)], [v + e for v, e in zip(ratio, se)],
                color=colour, alpha=0.2, linewidth=0,
            )  # fmt: skip
        ax.axhline(1.0, color="black", linewidth=0.8)
        for k, run in enumerate(r for r in comparison.runs if r != comparison.window):
            ax.axvspan(run.lo, run.hi, color="tab:gray", alpha=0.15,
                       label="feature loss also lower" if k == 0 else None)  # fmt: skip
        if comparison.window is not None:
            w = comparison.window
            ax.axvspan(w.lo, w.hi, color="tab:green", alpha=0.12,
                       label=f"suggested window [{w.lo:.3g}, {w.hi:.3g}]")  # fmt: skip
        s = comparison.schedule
        ax.set_title(f"rho = ({s.rho_bottom:.3g}, {s.rho_top:.3g}) vs (1, 1)", fontsize=10)
        ax.set_xscale("log")
        ax.set_xlabel("sigma")
        ax.set_ylabel("tuned / baseline")
        ax.legend(fontsize=8)
    fig.suptitle(title or f"{analysis.losses.pixel.shape[2]} images, bands ±{analysis.z:g} s.e.", fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
