"""Repeated runs of the service with the window stage, checked on an unseen block of seeds (docs/results.md).

    python benchmarks/window_repeats.py --storage sqlite:///windows.db --model demo \\
        --unseen-seed-base 3000000000 --unseen-samples 30000 --out windows.json --markdown windows.md

Every study of ``--model`` in the storage is one repeat of a (sampler, NFE): repeats differ by their seed
base (search and held-out seeds) and their workers' TPE seeds. Per (sampler, NFE), on ``--unseen-samples``
seeds from ``--unseen-seed-base`` (no study used them), in ``--blocks`` blocks: the baseline (1, 1), each
repeat's answer (pair and window), each repeat's full-range answer, and the hand-checked windows of
docs/analysis.md (``--hand``); every gain is paired with the baseline on those seeds (jackknife s.e.), and
each repeat's answer is compared with the best answer any repeat found (paired: "within 1 s.e."). Also per
repeat: the samples spent to the final answer, all stages (search, growth, refinement, validation, window
screens and window validation), against the NFE-9 grid's 810,000.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from optuna.trial import TrialState

from skiptune.devices import resolve_device
from skiptune.nets.registry import load_model
from skiptune.objectives.holdout import BlockDistances
from skiptune.search import records as rec
from skiptune.search.experiment.state import Experiment, load_experiment
from skiptune.search.experiment.validation import compare
from skiptune.search.query import answer_of
from skiptune.search.study import StoredStudy, find_studies
from skiptune.search.worker.objective import build_objective
from skiptune.skips import SkipSchedule
from skiptune.storage import open_storage


def samples_spent(exp: Experiment) -> dict[str, int]:
    """Every sample the experiment spent: search-seed trials (all phases and screens), held-out jobs."""

    def trials(phases: list[Any]) -> int:
        return sum(
            int(t.last_step or 0)
            for p in phases
            for t in p.trials
            if t.user_attrs.get(rec.ROLE_ATTR) != rec.PRIOR and t.state != TrialState.WAITING
        )

    held_out = sum(
        int(t.user_attrs[rec.HOLDOUT_ATTR]["n_samples"])
        for r in exp.rounds
        for t in r.trials
        if rec.HOLDOUT_ATTR in t.user_attrs
    )
    out = {"search": trials(exp.phases), "window_screen": trials(exp.windows), "held_out": held_out}
    return {**out, "total": sum(out.values())}


def _key(s: SkipSchedule) -> tuple[Any, ...]:
    return (round(s.rho_bottom, 6), round(s.rho_top, 6), tuple(round(v, 6) for v in s.sigma_window or ()))


def _label(s: SkipSchedule) -> str:
    if s.is_identity:
        return "(1, 1)"
    w = f" in [{s.sigma_window[0]:.4g}, {s.sigma_window[1]:.4g}]" if s.sigma_window else ""
    return f"({s.rho_bottom:.3f}, {s.rho_top:.3f}){w}"


def _hand(text: str) -> dict[int, SkipSchedule]:
    out = {}
    for part in filter(None, text.split(";")):
        nfe, values = part.split(":")
        rb, rt, lo, hi = (float(v) for v in values.split(","))
        out[int(nfe)] = SkipSchedule(rb, rt, (lo, hi))
    return out


def check_group(studies: list[StoredStudy], storage: Any, net: Any, args: argparse.Namespace,
                hand: SkipSchedule | None) -> dict[str, Any]:  # fmt: skip
    """One (sampler, NFE): every repeat's answer and cost, and the unseen-seed check."""
    repeats = []
    schedules: dict[tuple[Any, ...], SkipSchedule] = {_key(SkipSchedule()): SkipSchedule()}
    for study in studies:
        exp = load_experiment(storage, study)
        answer = answer_of(exp)
        if answer is None:
            repeats.append({"study": study.name, "status": "no trial"})
            continue
        schedule = SkipSchedule(answer.rho_bottom, answer.rho_top, answer.sigma_window)
        schedules[_key(schedule)] = schedule
        full = answer.full_range
        full_schedule = SkipSchedule(full["rho_bottom"], full["rho_top"]) if full else schedule
        schedules[_key(full_schedule)] = full_schedule
        repeats.append({"study": study.name, "seed_base": study.spec.objective.seed_base,
                        "answer": answer.to_dict(), "schedule": _label(schedule), "key": _key(schedule),
                        "full_key": _key(full_schedule), "samples": samples_spent(exp)})  # fmt: skip
    hand_full = SkipSchedule(hand.rho_bottom, hand.rho_top) if hand is not None else None
    for extra in (hand, hand_full):
        if extra is not None:
            schedules[_key(extra)] = extra
    spec = studies[0].spec
    objective = build_objective(net, spec, device=net_device(net), batch_size=args.batch_size)
    measured: dict[tuple[Any, ...], BlockDistances] = {}
    for key, schedule in schedules.items():
        t = time.time()
        measured[key] = objective.block_distances(
            schedule, seed_base=args.unseen_seed_base, n_samples=args.unseen_samples, blocks=args.blocks
        )
        print(f"  {spec.sampler} NFE {spec.nfe} {_label(schedule)}: {measured[key].value:.5g} "
              f"({time.time() - t:.0f} s)", flush=True)  # fmt: skip
    base = measured[_key(SkipSchedule())]
    unseen = {}
    for key, schedule in schedules.items():
        c = compare({}, measured[key], base)
        unseen[key] = {"schedule": _label(schedule), "value": c.value, "gain": c.relative_gain,
                       "gain_se": c.relative_gain_se}  # fmt: skip
    answered = {r["key"] for r in repeats if "key" in r} or {_key(SkipSchedule())}
    best = min(answered, key=lambda k: measured[k].value)
    for r in repeats:
        if "key" not in r:
            continue
        vs = compare({}, measured[r["key"]], measured[best])  # gain > 0: this repeat's answer is better
        r["unseen"] = unseen[r.pop("key")]
        r["unseen_full_range"] = unseen[r.pop("full_key")]
        r["vs_best_answer"] = {"gain": vs.relative_gain, "gain_se": vs.relative_gain_se,
                               "within_1_se": -vs.relative_gain <= vs.relative_gain_se}  # fmt: skip
        r["missed_real_gain"] = (r["answer"]["status"] == "no-gain"
                                 and unseen[best]["gain"] >= 2 * unseen[best]["gain_se"])  # fmt: skip
    return {"sampler": spec.sampler, "nfe": spec.nfe, "unseen_seed_base": args.unseen_seed_base,
            "unseen_samples": args.unseen_samples, "best_answer": unseen[best], "repeats": repeats,
            "hand": unseen.get(_key(hand)) if hand is not None else None,
            "hand_full_range": unseen.get(_key(hand_full)) if hand_full is not None else None,
            "baseline": base.value}  # fmt: skip


def net_device(net: Any) -> torch.device:
    return next(p.device for p in net.parameters())


def _pct(row: dict[str, Any] | None, key: str = "gain") -> str:
    if not row or row.get(key) is None:
        return "-"
    return f"{100 * row[key]:+.1f} ± {100 * row[key + '_se']:.1f}%"


def markdown(groups: list[dict[str, Any]], grid_samples: int) -> str:
    lines = ["| study | repeat | status | full-range answer (held-out gain) | window (held-out gain) | "
             "answer, unseen seeds | vs best repeat's answer (unseen, paired) | samples, all stages "
             "(% of grid) |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for g in groups:
        for i, r in enumerate(g["repeats"]):
            if "answer" not in r:
                continue
            a, full, w = r["answer"], r["answer"].get("full_range"), r["answer"].get("window")
            full_text = (f"({full['rho_bottom']:.3f}, {full['rho_top']:.3f}) {_pct(full)}" if full else "-")
            win = (f"[{w['sigma_window'][0]:.3g}, {w['sigma_window'][1]:.3g}] {_pct(w)}"
                   + ("" if w["chosen"] else " (not chosen)") if w else "-")  # fmt: skip
            vs = r["vs_best_answer"]
            total = r["samples"]["total"]
            lines.append(
                f"| {g['sampler']} NFE {g['nfe']} | {i} | {a['status']} | {full_text} | {win} | "
                f"{r['unseen']['schedule']} {_pct(r['unseen'])} | {_pct(vs)}"
                f"{' ✓' if vs['within_1_se'] else ''}{' **missed**' if r['missed_real_gain'] else ''} | "
                f"{total:,} ({100 * total / grid_samples:.1f}%) |"
            )
        if g["hand"]:
            lines.append(f"| {g['sampler']} NFE {g['nfe']} | hand | - | {_pct(g['hand_full_range'])} | "
                         f"{g['hand']['schedule']} | {_pct(g['hand'])} | | |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--storage", required=True)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--unseen-seed-base", type=int, default=3_000_000_000)
    parser.add_argument("--unseen-samples", type=int, default=30000)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--hand", default="35:0.810,0.997,0.0063,0.634;9:1.131,0.854,0.0252,2.53",
                        help="Heun NFE:RB,RT,LO,HI;... hand-checked windows (docs/analysis.md)")  # fmt: skip
    parser.add_argument("--grid-samples", type=int, default=810000)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)
    storage = open_storage(args.storage)
    device = resolve_device(args.device)
    net = load_model(args.model, device=device).net
    if device.type == "cuda":
        from skiptune.nets.fast import prepare_denoiser

        net = prepare_denoiser(net)  # the workers' precision: the studies were searched in it
    groups_of: dict[tuple[str, int], list[StoredStudy]] = defaultdict(list)
    for s in find_studies(storage, model=args.model):
        groups_of[(s.spec.sampler, s.spec.nfe)].append(s)
    hand = _hand(args.hand)
    groups = []
    for (sampler, nfe), studies in sorted(groups_of.items()):
        studies.sort(key=lambda s: s.spec.objective.seed_base)
        groups.append(check_group(studies, storage, net, args, hand.get(nfe) if sampler == "heun" else None))
    result = {"gpu": torch.cuda.get_device_name() if device.type == "cuda" else None, "groups": groups}
    args.out.write_text(json.dumps(result, indent=2, default=str))
    table = markdown(groups, args.grid_samples)
    if args.markdown is not None:
        args.markdown.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
