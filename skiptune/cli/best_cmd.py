"""``skiptune best``: the best (rho_bottom, rho_top) found for a model, sampler and NFE."""

from __future__ import annotations

import argparse

from skiptune.cli.common import add_json, add_storage, add_study_selector, print_json, storage_url
from skiptune.search.query import BestCoefficients, best_coefficients
from skiptune.storage import open_storage

HELP = "print the best skip coefficients found for a model x sampler x NFE"
DESCRIPTION = """Print the recommended (rho_bottom, rho_top) of a study and how far to trust it: its
status (searching, validating, validated, no-gain, or unvalidated for studies without validation), the
held-out gain over the untuned baseline +- one standard error and the samples behind it, and the
search's own (optimistically biased) numbers.

examples:
  skiptune best --model demo --nfe 9
  skiptune best --model edm-cifar10 --nfe 19 --sampler heun --json --storage postgresql://db/skiptune
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_study_selector(parser)
    add_storage(parser)
    add_json(parser)


def run(args: argparse.Namespace) -> int:
    best = best_coefficients(
        open_storage(storage_url(args), read_only=True),
        args.model,
        args.nfe,
        args.sampler,
        study_name=args.study,
    )
    if args.json:
        print_json(best.to_dict())
        return 0
    for line in describe(best):
        print(line)
    return 0


def describe(best: BestCoefficients) -> list[str]:
    """The answer as text lines: the pair, its status, the held-out evidence, the search's own numbers."""
    lines = [
        f"study          {best.study_name}",
        f"status         {best.status}" + ("" if best.validated else "  (unvalidated: search seeds only)"),
        f"rho_bottom     {best.rho_bottom:.4f}",
        f"rho_top        {best.rho_top:.4f}",
    ]
    if best.sigma_window is not None:
        lo, hi = best.sigma_window
        lines.append(f"sigma window   [{lo:.4g}, {hi:.4g}]  (the pair acts only at these noise levels)")
    elif best.validated:
        lines.append("sigma window   none (the pair acts at every noise level)")
    if best.validated and best.gain is not None and best.gain_se is not None:
        lines.append(
            f"held-out       {best.holdout_value:.4f} vs baseline {best.holdout_baseline:.4f} "
            f"({best.holdout_samples} samples each)"
        )
        what = "gain" if best.status == "validated" else "best candidate's gain (not significant)"
        lines.append(f"{what:<14} {100 * best.gain:+.2f}% +- {100 * best.gain_se:.2f}% (1 s.e.)")
    lines += _window_lines(best)
    if best.value is not None:
        lines.append(f"search value   {best.value:.4f}  ({best.n_samples} samples, search seeds)")
    if best.baseline_value is None:
        lines.append("baseline       (not measured yet)")
    elif best.value is not None and not best.validated:
        gain = 100 * (best.baseline_value - best.value) / best.baseline_value if best.baseline_value else 0.0
        lines.append(f"baseline (1,1) {best.baseline_value:.4f}  ({gain:+.1f}% on search seeds, unvalidated)")
    lines.append(f"trials         {best.n_trials}")
    return lines


def _window_lines(best: BestCoefficients) -> list[str]:
    """The window stage's evidence: the full-range answer a window beat, or the window that did not win."""
    w, full = best.window, best.full_range
    if w is None or full is None:
        return []
    pct = f"{100 * w['gain_vs_full']:+.2f}% +- {100 * w['gain_vs_full_se']:.2f}%"
    if w["chosen"]:
        return [
            f"full range     ({full['rho_bottom']:.4f}, {full['rho_top']:.4f}) at every sigma: "
            f"{100 * full['gain']:+.2f}% +- {100 * full['gain_se']:.2f}%",
            f"window vs all  {pct} (held-out, paired: the window beat the full-range answer)",
        ]
    lo, hi = w["sigma_window"]
    return [f"best window    [{lo:.4g}, {hi:.4g}]: {pct} vs the full range (not significant: not used)"]
