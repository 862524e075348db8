"""The search's cost to a validated answer, against a dense grid (docs/results.md).

    python benchmarks/validated_cost.py --storage sqlite:///results.db --study NAME \\
        --grid-best 1.1125,0.85 --grid-value 2.3636 --grid-se 0.0192 --grid-samples 810000 --out cost.json

Counts every sample the study spent (each search trial's last reported rung, grow phases included; each
validation job's held-out samples), then measures the recommended pair and the grid's best pair the way
the grid was measured (the study's search seeds, ``grid_n`` samples, the worker's fast path on CUDA) and
says whether the recommendation is within one standard error of the grid's optimum.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from optuna.trial import TrialState

from skiptune.devices import resolve_device
from skiptune.nets.registry import load_model
from skiptune.search import records as rec
from skiptune.search.experiment.state import load_experiment
from skiptune.search.query import answer_of
from skiptune.search.study import find_studies
from skiptune.search.worker.objective import build_objective
from skiptune.skips import SkipSchedule
from skiptune.storage import open_storage


def samples_spent(exp) -> dict[str, int]:  # type: ignore[no-untyped-def]
    search = sum(
        int(t.last_step or 0)
        for p in exp.phases
        for t in p.trials
        if t.user_attrs.get(rec.ROLE_ATTR) != rec.PRIOR and t.state != TrialState.WAITING
    )
    validation = sum(
        int(t.user_attrs[rec.HOLDOUT_ATTR]["n_samples"])
        for r in exp.rounds
        for t in r.trials
        if rec.HOLDOUT_ATTR in t.user_attrs
    )
    return {"search": search, "validation": validation, "total": search + validation}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--storage", required=True)
    parser.add_argument("--study", required=True)
    parser.add_argument("--grid-best", required=True, help="RB,RT of the grid's best point")
    parser.add_argument("--grid-value", type=float, required=True)
    parser.add_argument("--grid-se", type=float, required=True)
    parser.add_argument("--grid-samples", type=int, required=True, help="samples the whole grid cost")
    parser.add_argument("--grid-n", type=int, default=10000, help="samples per grid point (seeds 0..n-1)")
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    storage = open_storage(args.storage)
    (study,) = [s for s in find_studies(storage) if s.name == args.study]
    exp = load_experiment(storage, study)
    answer = answer_of(exp)
    assert answer is not None
    device = resolve_device(args.device)
    net = load_model(study.spec.model, device=device).net
    if device.type == "cuda":
        from skiptune.nets.fast import prepare_denoiser

        net = prepare_denoiser(net)
    from dataclasses import replace

    from skiptune.objectives.spec import default_rungs

    grid_spec = replace(
        study.spec,
        objective=replace(study.spec.objective, n_samples=args.grid_n, rungs=default_rungs(args.grid_n)[-1:]),
    )
    objective = build_objective(net, grid_spec, device=device, batch_size=args.batch_size)
    rb, rt = (float(v) for v in args.grid_best.split(","))
    measured = {
        "recommended": list(objective.evaluate(SkipSchedule(answer.rho_bottom, answer.rho_top)))[-1][1],
        "grid_best": list(objective.evaluate(SkipSchedule(rb, rt)))[-1][1],
        "baseline": list(objective.evaluate(SkipSchedule()))[-1][1],
    }
    spent = samples_spent(exp)
    recommended = measured["recommended"]
    result = {
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "study": study.name,
        "answer": answer.to_dict(),
        "samples": spent,
        "fraction_of_grid": spent["total"] / args.grid_samples,
        "measured_on_grid_seeds": measured,
        "grid_value_recorded": args.grid_value,
        "within_one_se_of_grid_best_recorded": recommended <= args.grid_value + args.grid_se,
        "within_one_se_of_grid_best_same_run": recommended <= measured["grid_best"] + args.grid_se,
    }
    print(json.dumps(result, indent=2, default=str))
    args.out.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
