"""The measurements behind docs/results.md that are not the search itself (which `skiptune worker` does).

    python benchmarks/demo_results.py --storage sqlite:///results.db --out results.json \
        --reeval-samples 50000 --grid-samples 10000 --device cuda

For every study in the storage: re-evaluate the baseline (1, 1) and the best pair on *held-out* seeds
(seed bases that no trial used, so the best-of-N selection on the search seeds does not flatter it),
with several seed bases (mean and spread). For Heun NFE 9: a dense grid over the default bounds on the
study's own seeds (the ground-truth landscape the search is compared with). And the fast path vs fp32
on the same seeds (paired), to show the fast path does not move the distance.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from skiptune.nets.fast import prepare_denoiser
from skiptune.nets.registry import load_model
from skiptune.objectives.features import create_extractor
from skiptune.objectives.fid import FDObjective
from skiptune.objectives.reference import load_reference
from skiptune.objectives.spec import ObjectiveSpec
from skiptune.search.query import summary_rows
from skiptune.skips import SkipSchedule

HELD_OUT_SEED_BASES = (1_000_000, 2_000_000, 3_000_000)


def distance(
    net: torch.nn.Module,
    args: argparse.Namespace,
    *,
    sampler: str,
    nfe: int,
    schedule: SkipSchedule,
    n_samples: int,
    seed_base: int,
) -> float:
    spec = ObjectiveSpec.describe(
        args.extractor_obj,
        args.reference_obj,
        reference_name="demo",
        n_samples=n_samples,
        seed_base=seed_base,
    )
    objective = FDObjective(
        spec=spec,
        denoiser=net,
        sampler=sampler,
        nfe=nfe,
        extractor=args.extractor_obj,
        reference=args.reference_obj,
        batch_size=args.batch_size,
        device=args.device,
        progress=False,
    )
    return list(objective.evaluate(schedule))[-1][1]


def reevaluate(net: torch.nn.Module, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for row in summary_rows(args.storage, args.model):
        if args.nfe and (row["sampler"], row["nfe"]) not in args.nfe:
            continue
        best = SkipSchedule(row["rho_bottom"], row["rho_top"])
        out: dict[str, Any] = {
            "study": row["study"],
            "sampler": row["sampler"],
            "nfe": row["nfe"],
            "rho_bottom": best.rho_bottom,
            "rho_top": best.rho_top,
        }
        for label, schedule in (("baseline", SkipSchedule()), ("tuned", best)):
            values = [
                distance(
                    net,
                    args,
                    sampler=row["sampler"],
                    nfe=row["nfe"],
                    schedule=schedule,
                    n_samples=args.reeval_samples,
                    seed_base=s,
                )
                for s in HELD_OUT_SEED_BASES
            ]
            out[label] = {"values": values, "mean": statistics.mean(values), "std": statistics.stdev(values)}
        print(json.dumps(out), flush=True)
        rows.append(out)
    return rows


def grid(net: torch.nn.Module, args: argparse.Namespace) -> list[dict[str, float]]:
    lo, hi, n = 0.5, 1.2, 9
    values = [lo + (hi - lo) * i / (n - 1) for i in range(n)]
    out = []
    for rb in values:
        for rt in values:
            d = distance(
                net,
                args,
                sampler="heun",
                nfe=9,
                schedule=SkipSchedule(rb, rt),
                n_samples=args.grid_samples,
                seed_base=0,
            )
            out.append({"rho_bottom": rb, "rho_top": rt, "value": d})
    best = min(out, key=lambda r: r["value"])
    # the standard error of the grid's best at this sample count: its spread over held-out seed bases
    spread = [
        distance(
            net,
            args,
            sampler="heun",
            nfe=9,
            schedule=SkipSchedule(best["rho_bottom"], best["rho_top"]),
            n_samples=args.grid_samples,
            seed_base=s,
        )
        for s in HELD_OUT_SEED_BASES
    ]
    print(json.dumps({"grid_best": best, "grid_best_heldout": spread}), flush=True)
    return [*out, {"grid_best_heldout": spread}]  # type: ignore[list-item]


def precision(net: torch.nn.Module, fast: torch.nn.Module, args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for schedule in (SkipSchedule(), SkipSchedule(0.8, 1.0)):
        row: dict[str, Any] = {"rho": [schedule.rho_bottom, schedule.rho_top]}
        for label, denoiser in (("fp32", net), ("fast", fast)):
            start = time.perf_counter()
            row[label] = distance(
                denoiser,
                args,
                sampler="heun",
                nfe=9,
                schedule=schedule,
                n_samples=args.grid_samples,
                seed_base=0,
            )
            row[f"{label}_seconds"] = time.perf_counter() - start
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--storage", required=True)
    p.add_argument("--model", default="demo")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-size", type=int, default=2000)
    p.add_argument("--reeval-samples", type=int, default=50000)
    p.add_argument("--grid-samples", type=int, default=10000)
    p.add_argument("--parts", default="precision,grid,reeval")
    p.add_argument("--only", default="", help="re-evaluate only these studies, e.g. heun:9,heun:13")
    args = p.parse_args()
    args.nfe = {(s.split(":")[0], int(s.split(":")[1])) for s in args.only.split(",") if s}
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference stays fp32
    torch.backends.cudnn.allow_tf32 = False
    net = load_model(args.model, device=args.device).net
    args.extractor_obj = create_extractor("fmnist-classifier", device=args.device)
    args.reference_obj = load_reference("demo")
    results: dict[str, Any] = {"card": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    fast = prepare_denoiser(net) if torch.device(args.device).type == "cuda" else net
    for part in args.parts.split(","):
        start = time.perf_counter()
        if part == "precision":
            results[part] = precision(net, fast, args)
        elif part == "grid":
            results[part] = grid(fast, args)
        elif part == "reeval":
            results[part] = reevaluate(fast, args)
        results[f"{part}_seconds"] = time.perf_counter() - start
        Path(args.out).write_text(json.dumps(results, indent=1))
        print(f"[{part}] done in {results[f'{part}_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
