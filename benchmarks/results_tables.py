"""Tables and the grid plot of docs/results.md, from the study database and benchmarks/demo_results.py output.

    python benchmarks/results_tables.py --storage sqlite:///docs/results/results.db \
        --results docs/results/results.json --out docs/results
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from optuna.trial import TrialState

from skiptune.search.query import summary_rows
from skiptune.search.study import find_studies, fresh_trials
from skiptune.storage import open_storage


def samples_used(trial: Any, rungs: list[int]) -> int:
    """Samples a trial generated: all of them if complete, up to its last reported rung if pruned."""
    if trial.state == TrialState.COMPLETE:
        return rungs[-1]
    return max(trial.intermediate_values, default=0)


def search_table(storage: Any, model: str, reeval: dict[str, Any]) -> str:
    lines = [
        "| sampler | NFE | baseline (search seeds) | tuned (search seeds) | best (rho_bottom, rho_top) "
        "| baseline, held-out 3x50k | tuned, held-out 3x50k | gain (held-out) | trials (complete/pruned) "
        "| samples |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(summary_rows(storage, model), key=lambda r: (r["sampler"], r["nfe"])):
        study = next(s for s in find_studies(storage, model=model) if s.name == row["study"])
        rungs = list(study.spec.objective.rungs)
        used = sum(samples_used(t, rungs) for t in fresh_trials(storage, study.study_id))
        r = reeval[row["study"]]
        b, t = r["baseline"], r["tuned"]
        gain = 100 * (b["mean"] - t["mean"]) / b["mean"]
        lines.append(
            f"| {row['sampler']} | {row['nfe']} | {row['baseline_value']:.4f} | {row['value']:.4f} "
            f"| ({row['rho_bottom']:.3f}, {row['rho_top']:.3f}) | {b['mean']:.4f} ± {b['std']:.4f} "
            f"| {t['mean']:.4f} ± {t['std']:.4f} | {gain:+.1f}% | {row['n_complete']}/{row['n_pruned']} "
            f"| {used:,} |"
        )
    return "\n".join(lines)


def grid_vs_search(storage: Any, model: str, grid: list[dict[str, Any]]) -> str:
    points = [g for g in grid if "value" in g]
    heldout = next(g["grid_best_heldout"] for g in grid if "grid_best_heldout" in g)
    best = min(points, key=lambda g: g["value"])
    se = float(np.std(heldout, ddof=1))
    target = best["value"] + se
    study = next(
        s for s in find_studies(storage, model=model) if s.spec.sampler == "heun" and s.spec.nfe == 9
    )
    rungs = list(study.spec.objective.rungs)
    used, reached = 0, None
    for trial in sorted(fresh_trials(storage, study.study_id), key=lambda t: t.number):
        used += samples_used(trial, rungs)
        if trial.state == TrialState.COMPLETE and trial.value is not None and trial.value <= target:
            reached = (trial.number, used, trial.value)
            break
    grid_samples = len(points) * rungs[-1]
    text = (
        f"grid best {best['value']:.4f} at ({best['rho_bottom']:.4f}, {best['rho_top']:.4f}); "
        f"its spread over 3 held-out seed bases (std) {se:.4f}, so the target is <= {target:.4f}. "
    )
    if reached is None:
        return text + "The search never got there."
    return text + (
        f"The search reached it at trial {reached[0]} (value {reached[2]:.4f}) after {reached[1]:,} samples, "
        f"vs {grid_samples:,} for the 9x9 grid ({grid_samples / reached[1]:.1f}x fewer)."
    )


def grid_plot(grid: list[dict[str, Any]], out: Path) -> None:
    points = [g for g in grid if "value" in g]
    axis = sorted({g["rho_bottom"] for g in points})
    z = np.array([[next(g["value"] for g in points if g["rho_bottom"] == rb and g["rho_top"] == rt)
                   for rb in axis] for rt in axis])  # fmt: skip
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(z, origin="lower", extent=(axis[0], axis[-1], axis[0], axis[-1]), aspect="auto",
                   cmap="viridis", norm=matplotlib.colors.LogNorm())  # fmt: skip
    best = min(points, key=lambda g: g["value"])
    ax.plot(best["rho_bottom"], best["rho_top"], "r*", ms=14, label=f"grid best {best['value']:.3f}")
    ax.plot(1.0, 1.0, "kx", ms=10, mew=3, label="baseline (1, 1)")
    ax.set(xlabel="rho_bottom", ylabel="rho_top", title="demo, Heun NFE 9: 9x9 grid, 10k samples each")
    ax.legend(loc="upper left", fontsize=8)
    fig.colorbar(im, label="Fréchet distance (fmnist-classifier features)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--storage", required=True)
    p.add_argument("--results", required=True)
    p.add_argument("--model", default="demo")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    storage = open_storage(args.storage)
    results = json.loads(Path(args.results).read_text())
    reeval = {r["study"]: r for r in results["reeval"]}
    print(search_table(storage, args.model, reeval))
    print()
    print(grid_vs_search(storage, args.model, results["grid"]))
    print()
    for row in results["precision"]:
        print(f"precision rho={row['rho']}: fp32 {row['fp32']:.4f}, fast {row['fast']:.4f}")
    grid_plot(results["grid"], Path(args.out) / "grid_heun_nfe9.png")


if __name__ == "__main__":
    main()
