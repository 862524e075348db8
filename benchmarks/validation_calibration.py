"""Calibration of the validation stage's standard error (docs/results.md), on the demo model.

    python benchmarks/validation_calibration.py --pairs "9:1.054,0.870;19:0.776,1.039" \\
        --pool 200000 --replicates 20 --blocks 10 --device cuda --out calibration.json

For each (NFE, pair): the baseline (1, 1) and the pair are sampled on the same pool of seeds (far from
every search and validation seed), in ``replicates x blocks`` small blocks. Each replicate is one
validation as the service runs it (``pool / replicates`` held-out samples in ``blocks`` blocks: relative
gain and its jackknife standard error, ``skiptune.search.validate.compare``). Its "truth" is the gain
measured on the rest of the pool (``replicates - 1`` times larger, disjoint). Coverage: how often
``|gain - truth| <= z * se`` for z = 1 and 2 (a calibrated estimator: about 68% and 95%).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from skiptune.devices import resolve_device
from skiptune.nets.registry import load_model
from skiptune.objectives.features import create_extractor
from skiptune.objectives.fid import FDObjective
from skiptune.objectives.frechet import FeatureStats
from skiptune.objectives.holdout import from_block_stats
from skiptune.objectives.reference import load_reference, resolve_reference
from skiptune.objectives.spec import ObjectiveSpec
from skiptune.search.experiment.validation import compare
from skiptune.search.settings import ValidationSettings
from skiptune.skips import SkipSchedule

POOL_SEED_BASE = 5_000_000_000  # far from search (0..) and default held-out (1e9..) seeds


def _merged(stats: list[FeatureStats]) -> FeatureStats:
    out = FeatureStats(stats[0].feature_dim, device=stats[0].sum.device)
    for s in stats:
        out.merge(s)
    return out


def calibrate_pair(objective: FDObjective, schedule: SkipSchedule, args: argparse.Namespace) -> dict:
    size = args.pool // (args.replicates * args.blocks)
    bounds = [(i * size, (i + 1) * size) for i in range(args.replicates * args.blocks)]
    t0 = time.perf_counter()
    base = objective.block_stats(SkipSchedule(), seed_base=POOL_SEED_BASE, bounds=bounds)
    cand = objective.block_stats(schedule, seed_base=POOL_SEED_BASE, bounds=bounds)
    seconds = time.perf_counter() - t0
    params = {"rho_bottom": schedule.rho_bottom, "rho_top": schedule.rho_top}
    rows = []
    for r in range(args.replicates):
        mine = slice(r * args.blocks, (r + 1) * args.blocks)
        rest = [i for i in range(len(bounds)) if not (mine.start <= i < mine.stop)]
        est = compare(
            params,
            from_block_stats(cand[mine], objective._distance, seed_base=r),
            from_block_stats(base[mine], objective._distance, seed_base=r),
        )
        b_rest = objective._distance(_merged([base[i] for i in rest]))
        c_rest = objective._distance(_merged([cand[i] for i in rest]))
        truth = (b_rest - c_rest) / b_rest
        rows.append({"gain": est.relative_gain, "se": est.relative_gain_se, "truth": truth})
    # the rule's critical value for 2 "normal" s.e. with these blocks (validation.ValidationSettings.critical)
    critical = ValidationSettings(n_samples=2 * args.blocks, seed_base=0, blocks=args.blocks).critical
    zs = (1.0, 2.0, critical)
    cover = {z: sum(abs(x["gain"] - x["truth"]) <= z * x["se"] for x in rows) / len(rows) for z in zs}
    return {
        "pair": params,
        "samples_per_replicate": size * args.blocks,
        "truth_samples": size * args.blocks * (args.replicates - 1),
        "coverage_1se": cover[1],
        "coverage_2se": cover[2],
        "critical_t": critical,
        "coverage_critical_t": cover[critical],  # nominal: 95.45%
        "mean_gain": sum(x["gain"] for x in rows) / len(rows),
        "mean_se": sum(x["se"] for x in rows) / len(rows),
        "sd_gain": float(torch.tensor([x["gain"] for x in rows], dtype=torch.float64).std()),
        "sampling_seconds": seconds,
        "replicates": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", required=True, help='"NFE:RB,RT;NFE:RB,RT"')
    parser.add_argument("--sampler", default="heun")
    parser.add_argument("--pool", type=int, default=200_000)
    parser.add_argument("--replicates", type=int, default=20)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--fast", action="store_true", help="sample via the fast path, as workers")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = resolve_device(args.device)
    net = load_model("demo", device=device).net
    if args.fast:
        from skiptune.nets.fast import prepare_denoiser

        net = prepare_denoiser(net)
    extractor = create_extractor("fmnist-classifier", device=device)
    reference = load_reference(resolve_reference("demo"))
    results = []
    for item in args.pairs.split(";"):
        nfe_text, pair = item.split(":")
        rb, rt = (float(v) for v in pair.split(","))
        spec = ObjectiveSpec.describe(extractor, reference, reference_name="demo", n_samples=args.pool)
        objective = FDObjective(
            spec=spec, denoiser=net, sampler=args.sampler, nfe=int(nfe_text), extractor=extractor,
            reference=reference, batch_size=args.batch_size, device=device, progress=False,
        )  # fmt: skip
        row = {"nfe": int(nfe_text), **calibrate_pair(objective, SkipSchedule(rb, rt), args)}
        print(json.dumps({k: v for k, v in row.items() if k != "replicates"}), flush=True)
        results.append(row)
    args.out.write_text(json.dumps({"device": str(device), "gpu": _gpu_name(), "results": results}, indent=2))


def _gpu_name() -> str | None:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


if __name__ == "__main__":
    main()
