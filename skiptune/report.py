"""``skiptune report``: PNG plots of a model's studies (matplotlib, Agg backend, no display needed).

* ``distance_vs_nfe.png``: per sampler, the baseline (1, 1) and the best tuned distance against NFE;
* ``trials_<sampler>_nfe<N>_<hash>.png``: per study, every finished trial in the (rho_bottom, rho_top)
  plane coloured by its value (complete trials as dots, pruned ones as crosses), best and baseline marked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from skiptune.errors import SkiptuneError
from skiptune.io import atomic_write, check_output_dir
from skiptune.search.experiment.state import load_experiment
from skiptune.search.query import BestCoefficients, answer_of, summary_rows
from skiptune.search.records import PRIOR, ROLE_ATTR
from skiptune.search.study import find_studies


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: works on headless GPU machines
    import matplotlib.pyplot as plt

    return plt


def write_report(storage: optuna.storages.BaseStorage, model: str, out_dir: str | Path) -> list[Path]:
    """Write the report's PNG files into ``out_dir`` (created); returns their paths."""
    out = check_output_dir(out_dir, what="the report folder (--out)")
    rows = summary_rows(storage, model)
    if not rows:
        raise SkiptuneError(f"no study for model {model!r} in this storage; nothing to report")
    paths = [_distance_vs_nfe(rows, model, out / "distance_vs_nfe.png")]
    for study in find_studies(storage, model=model):
        name = f"trials_{study.spec.sampler}_nfe{study.spec.nfe}_{study.spec.identity_hash}.png"
        exp = load_experiment(storage, study)
        trials = [t for t in exp.search_trials() if t.user_attrs.get(ROLE_ATTR) != PRIOR]
        paths.append(_trial_scatter(trials, _title(study.name, answer_of(exp)), out / name, answer_of(exp)))
    return paths


def _title(name: str, answer: BestCoefficients | None) -> str:
    if answer is None:
        return name
    if answer.validated and answer.gain is not None and answer.gain_se is not None:
        evidence = f"held-out gain {100 * answer.gain:+.1f}% ± {100 * answer.gain_se:.1f}%"
        if answer.sigma_window is not None:
            evidence += f" in sigma [{answer.sigma_window[0]:.3g}, {answer.sigma_window[1]:.3g}]"
        return f"{name}\n{answer.status}: {evidence} ({answer.holdout_samples} samples)"
    return f"{name}\n{answer.status} (unvalidated: search seeds only)"


def _distance_vs_nfe(rows: list[dict[str, Any]], model: str, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for sampler in sorted({r["sampler"] for r in rows}):
        mine = sorted((r for r in rows if r["sampler"] == sampler), key=lambda r: r["nfe"])
        base = [(r["nfe"], r["baseline_value"]) for r in mine if r["baseline_value"] is not None]
        tuned = [(r["nfe"], r["value"]) for r in mine if r["value"] is not None]
        if base:
            ax.plot(*zip(*base), "o--", label=f"{sampler} baseline (1, 1)")
        if tuned:
            ax.plot(*zip(*tuned), "s-", label=f"{sampler} skip-tuned")
    ax.set_xlabel("NFE")
    ax.set_ylabel("Fréchet distance")
    ax.set_yscale("log")  # distances fall by orders of magnitude with NFE; gains are ratios
    ax.set_title(f"{model}: baseline vs skip-tuned")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    _save_figure(fig, path)
    return path


def _trial_scatter(
    trials: list[optuna.trial.FrozenTrial], title: str, path: Path, answer: BestCoefficients | None
) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.value is not None]
    if done:
        values = [float(t.value) for t in done]  # type: ignore[arg-type]
        lo, hi = min(values), max(values)
        for state, marker in ((TrialState.COMPLETE, "o"), (TrialState.PRUNED, "x")):
            pts = [t for t in done if t.state == state]
            if not pts:
                continue
            sc = ax.scatter(
                [t.params["rho_bottom"] for t in pts],
                [t.params["rho_top"] for t in pts],
                c=[float(t.value) for t in pts],  # type: ignore[arg-type]
                cmap="viridis_r",
                vmin=lo,
                vmax=hi,
                s=36,
                marker=marker,
                label=state.name.lower(),
            )
        fig.colorbar(sc, ax=ax, label="distance (pruned: at its last rung)")
        complete = [t for t in done if t.state == TrialState.COMPLETE]
        if complete:
            best = min(complete, key=lambda t: float(t.value))  # type: ignore[arg-type]
            ax.scatter(
                [best.params["rho_bottom"]],
                [best.params["rho_top"]],
                marker="*",
                s=260,
                c="red",
                edgecolors="black",
                label=f"search best {best.value:.4g} (unvalidated)",
            )
    if answer is not None and answer.validated:
        windowed = ", in a sigma window" if answer.sigma_window else ""
        ax.scatter([answer.rho_bottom], [answer.rho_top], marker="P", s=200, c="orange", edgecolors="black",
                   label=f"recommended ({answer.status}{windowed})")  # fmt: skip
    ax.scatter([1.0], [1.0], marker="X", s=120, c="black", label="baseline (1, 1)")
    ax.set_xlabel("rho_bottom")
    ax.set_ylabel("rho_top")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    _save_figure(fig, path)
    return path


def _save_figure(fig: Any, path: Path) -> None:
    """Write a figure as PNG atomically (a full disk leaves no half-written plot), then free it."""
    import matplotlib.pyplot as plt

    try:
        atomic_write(path, lambda f: fig.savefig(f, dpi=120, format="png"), what="a report plot")
    finally:
        plt.close(fig)
