"""Which search finds the NFE-9 valley with the demo's 8 trials? TPE vs GP on the measured grid, in seconds.

The landscape is the dense grid of docs/results.md (Heun NFE 9, 81 points x 10,000 samples over
[0.5, 1.2]^2, docs/results/wave1/results.json), interpolated; outside it the value grows with the
distance below 0.5 (as the demo's 200-sample trials there show). Each trial's value gets independent
relative noise (``--noise``); the baseline (1, 1) is the first trial, as in a study. Reported: the true
gain over the baseline of the pair each search would send to validation (its best trial), over seeds.

    python benchmarks/demo_search.py --seeds 20 --noise 0.015
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import optuna
from scipy.interpolate import RegularGridInterpolator

from skiptune.search.algorithms import build_sampler
from skiptune.search.space import SearchSpace

GRID = Path(__file__).resolve().parents[1] / "docs/results/wave1/results.json"
BASELINE = {"rho_bottom": 1.0, "rho_top": 1.0}


def landscape() -> RegularGridInterpolator:
    points = [p for p in json.loads(GRID.read_text())["grid"] if "rho_bottom" in p]
    xs = sorted({p["rho_bottom"] for p in points})
    ys = sorted({p["rho_top"] for p in points})
    value = {(p["rho_bottom"], p["rho_top"]): p["value"] for p in points}
    return RegularGridInterpolator((xs, ys), np.array([[value[(x, y)] for y in ys] for x in xs]))


def truth(f: RegularGridInterpolator, rb: float, rt: float) -> float:
    inside = float(f([min(max(rb, 0.5), 1.2), min(max(rt, 0.5), 1.2)])[0])
    return inside * (1 + 1.2 * (max(0.0, 0.5 - rb) + max(0.0, 0.5 - rt)))


def search_gain(f: RegularGridInterpolator, search: str, trials: int, seed: int, noise: float) -> float:
    space = SearchSpace()
    rng = np.random.default_rng(seed + 1000)
    study = optuna.create_study(sampler=build_sampler(search, space=space, n_trials=trials, seed=seed))
    study.enqueue_trial(BASELINE)
    for _ in range(trials):
        trial = study.ask()
        s = space.suggest(trial)
        value = truth(f, s.rho_bottom, s.rho_top)
        study.tell(trial, value if trial.params == BASELINE else value * (1 + rng.normal(0, noise)))
    best = min((t for t in study.trials if t.params != BASELINE), key=lambda t: float(t.value or 0))
    return 1 - truth(f, best.params["rho_bottom"], best.params["rho_top"]) / truth(f, 1.0, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--noise", type=float, default=0.015, help="relative noise of a trial's value")
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    f = landscape()
    for search in ("tpe", "gp"):
        gains = np.array([search_gain(f, search, args.trials, s, args.noise) for s in range(args.seeds)])
        print(
            f"{search}: {args.trials} trials, noise {args.noise:.1%}: true gain of the best trial median "
            f"{np.median(gains):.1%}, >= 3% in {np.mean(gains >= 0.03):.0%} of {args.seeds} seeds, "
            f"worst {gains.min():.1%}"
        )


if __name__ == "__main__":
    main()
