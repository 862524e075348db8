"""Run-to-run agreement of the service's search, on landscapes measured on the GPU (docs/results.md).

    python benchmarks/search_surrogate.py --repeats 10 --out surrogate.json --markdown surrogate.md \\
        --config default= --config refine12="--refine-trials 12"

A GPU run of the demo's studies costs a device session, and one repeat says little about how often a
search misses; this runs the service itself (``study create``, real workers, SQLite, every stage but
the window stage) many times on stand-in landscapes fitted to the trials the GPU runs recorded.

Landscape: per (sampler, NFE), every search trial of the ``--db`` databases as log(distance / the
baseline's distance on the same seeds) at the last rung (a pruned trial's rung value is shifted by the
baseline's difference between its rung and the last one), fitted by a Gaussian process (anisotropic
squared-exponential kernel, hyperparameters by marginal likelihood over a grid; values clipped to
[-0.3, 0.7]). Its posterior mean f(rho) is the stand-in's true log ratio, shrunk where negative so
that its best gain is ``--best-gain`` (the best gain measured on unseen seeds, docs/results.md: a
fit's minimum over noisy trials overstates it).

Noise, with common random numbers as the real objective has them: each block of 500 seeds adds to f
a normal error of s.d. ``c / sqrt(500)`` x min(1, |rho - (1, 1)| / 0.1), so the baseline is exact;
``--noise independent``: fixed by (rho, block seed), nearby pairs share nothing (rougher than the real
surface, where nearby pairs turn the same seeds into nearly the same images); ``--noise smooth``: a
random smooth function of rho per block (random Fourier features, length scales half the landscape's).
c per study from the held-out standard errors measured on unseen seeds (``NOISE``). A distance from n
samples adds 60 / n (the small-sample bias seen between the 500 and 2,000 rungs).

Per config and (sampler, NFE): each repeat's answer, its true gain 1 - exp(f), and whether it is within
1 s.e. (20,000 unseen samples: ``c / sqrt(20000)``) of the best true gain any repeat reached, or a
``no-gain`` that misses a gain of >= 2 s.e. (the two goals of issue 20's point 5). It says how often a
search design loses a real gain on these landscapes; it does not replace a GPU run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import re
import shlex
import sqlite3
import tempfile
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skiptune.search.experiment.refine_shape import GPFit, fit_gp

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DBS = [
    ROOT / "docs/results/windows/windows.db",
    ROOT / "docs/results/results.db",
    ROOT / "docs/results/wave1/results.db",
]
STUDIES = [("heun", 9), ("heun", 13), ("heun", 19), ("heun", 35), ("dpmpp_2m", 10)]
#: Held-out s.e. of a gain on 20,000 unseen seeds (docs/results.md, window runs): c = s.e. x sqrt(20000).
NOISE = {
    ("heun", 9): 0.0015,
    ("heun", 13): 0.005,
    ("heun", 19): 0.010,
    ("heun", 35): 0.009,
    ("dpmpp_2m", 10): 0.004,
}
#: The best gain any answer reached on unseen seeds (docs/results.md): the stand-in's optimum.
BEST_GAIN = {
    ("heun", 9): 0.061,
    ("heun", 13): 0.050,
    ("heun", 19): 0.047,
    ("heun", 35): 0.050,
    ("dpmpp_2m", 10): 0.015,
}
UNSEEN = 20_000
BLOCK = 500
BIAS = 60.0


# ------------------------------------------------------------------------------- landscapes


def _trials(db: Path) -> Iterator[tuple[str, dict[str, float], dict[int, float], str | None]]:
    """(study root, params, rung values, role) of every search trial of one Optuna database."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True)) as c:
        for sid, name in c.execute("select study_id, study_name from studies").fetchall():
            if re.search(r"/(validate|window)\d+$", name):
                continue
            root = re.sub(r"/(grow|refine)\d+$", "", name)
            for (tid,) in c.execute("select trial_id from trials where study_id=?", (sid,)).fetchall():
                params = dict(
                    c.execute("select param_name, param_value from trial_params where trial_id=?", (tid,))
                )
                rungs = dict(
                    c.execute(
                        "select step, intermediate_value from trial_intermediate_values where trial_id=?",
                        (tid,),
                    )
                )
                role = c.execute(
                    "select value_json from trial_user_attributes where trial_id=? and key='skiptune_role'",
                    (tid,),
                ).fetchone()
                if "rho_bottom" in params and rungs and "sigma_a" not in params:
                    yield (
                        root,
                        params,
                        {int(k): v for k, v in rungs.items()},
                        json.loads(role[0]) if role else None,
                    )


def log_ratios(dbs: list[Path]) -> dict[tuple[str, int], np.ndarray]:
    """Per (sampler, NFE): rows (rho_bottom, rho_top, log ratio to the baseline on the same seeds)."""
    by_root: dict[str, list[Any]] = defaultdict(list)
    for db in dbs:
        for root, params, rungs, role in _trials(db):
            if role != "prior":
                by_root[f"{db}:{root}"].append((params, rungs, role))
    out: dict[tuple[str, int], list[tuple[float, float, float]]] = defaultdict(list)
    for key, trials in by_root.items():
        base = next((r for p, r, role in trials if role == "baseline"), None)
        m = re.search(r":demo/(\w+)/nfe=(\d+)/", key)
        if base is None or m is None:
            continue
        last = max(base)
        for params, rungs, _ in trials:
            step = last if last in rungs else max(rungs)
            value = rungs[step] - (base.get(step, base[last]) - base[last])
            ratio = max(value / base[last], 0.5)
            out[(m.group(1), int(m.group(2)))].append(
                (params["rho_bottom"], params["rho_top"], math.log(ratio))
            )
    return {k: np.array(v) for k, v in out.items()}


@dataclass
class Landscape:
    """A GP posterior mean over (rho_bottom, rho_top), shrunk below zero to a stated best gain."""

    gp: GPFit
    shrink: float = 1.0
    offset: float = 0.0
    flat: bool = False  # no pair changes the distance: every `validated` answer is a false positive

    @classmethod
    def fit(cls, rows: np.ndarray, best_gain: float) -> Landscape:
        scales = ([0.05, 0.1, 0.15, 0.25, 0.4], [0.01, 0.02, 0.03, 0.05, 0.08, 0.12])
        y = np.clip(rows[:, 2], -0.3, 0.7)
        land = cls(fit_gp(rows[:, :2], y, scales, [0.01, 0.02, 0.04, 0.08], min_signal=1e-4))
        grid = np.stack(np.meshgrid(np.linspace(0.2, 1.2, 201), np.linspace(0.2, 1.2, 201)), -1).reshape(
            -1, 2
        )
        land.offset = float(land.raw(np.array([[1.0, 1.0]]))[0])  # the baseline is exactly 0
        low = float(land.raw(grid).min()) - land.offset
        land.shrink = math.log(1 - best_gain) / low if low < 0 else 1.0
        return land

    @property
    def scales(self) -> tuple[float, float]:
        return self.gp.scales

    def raw(self, rho: np.ndarray) -> np.ndarray:
        return self.gp.predict(rho)

    def __call__(self, rho_bottom: float, rho_top: float) -> float:
        if self.flat:
            return 0.0
        f = float(self.raw(np.array([[rho_bottom, rho_top]]))[0]) - self.offset
        return f * self.shrink if f < 0 else f

    def best(self) -> tuple[float, float, float]:
        g = np.linspace(0.2, 1.2, 401)
        grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
        f = self.raw(grid)
        i = int(np.argmin(f))
        return float(grid[i, 0]), float(grid[i, 1]), 1 - math.exp(self(*grid[i]))


# ------------------------------------------------------------------------------- the stand-in objective


class SurrogateObjective:
    """The worker's objective on a :class:`Landscape`, with per-block noise and common random numbers."""

    def __init__(self, spec: Any, land: Landscape, noise: float, *, smooth: bool = False) -> None:
        self.spec, self.land, self.noise, self.smooth = spec, land, noise, smooth
        self.base = 0.25 * (1 + 0.05 * math.sin(spec.objective.seed_base))  # seeds move every value alike

    def identity(self) -> dict[str, Any]:
        return dict(self.spec.objective_identity())

    def _errors(self, schedule: Any, first_seed: int, n: int, size: int = BLOCK) -> np.ndarray:
        """The noise of the blocks of ``size`` seeds in [first_seed, first_seed + n)."""
        rho = (schedule.rho_bottom, schedule.rho_top)
        weight = min(1.0, math.hypot(rho[0] - 1, rho[1] - 1) / 0.1)
        out = []
        for start in range(first_seed, first_seed + n, size):
            sd = self.noise * math.sqrt(UNSEEN / size) * weight
            if self.smooth:  # a random smooth function of rho per block (random Fourier features)
                rng = np.random.default_rng(zlib.crc32(f"{start}:{size}".encode()))
                w = rng.standard_normal((64, 2)) / (np.array(self.land.scales) / 2)
                phase = rng.uniform(0, 2 * math.pi, 64)
                out.append(sd * math.sqrt(2 / 64) * float(np.cos(w @ np.array(rho) + phase).sum()))
                continue
            key = f"{rho[0]:.6f}:{rho[1]:.6f}:{schedule.sigma_window}:{start}:{size}"
            rng = np.random.default_rng(zlib.crc32(key.encode()))
            out.append(rng.standard_normal() * sd)
        return np.array(out)

    def _distance(self, schedule: Any, errors: np.ndarray, n: int) -> float:
        f = self.land(schedule.rho_bottom, schedule.rho_top)
        return self.base * math.exp(f + float(errors.mean())) + BIAS / n

    def evaluate(self, schedule: Any) -> Iterator[tuple[int, float]]:
        errors = self._errors(schedule, self.spec.objective.seed_base, self.spec.objective.n_samples)
        for rung in self.spec.objective.rungs:
            yield rung, self._distance(schedule, errors[: max(1, rung // BLOCK)], rung)

    def block_distances(self, schedule: Any, *, seed_base: int, n_samples: int, blocks: int) -> Any:
        from skiptune.objectives.holdout import BlockDistances

        errors = self._errors(schedule, seed_base, n_samples, n_samples // blocks)
        value = self._distance(schedule, errors, n_samples)
        loo = tuple(
            self._distance(schedule, np.delete(errors, b), n_samples - n_samples // blocks)
            for b in range(blocks)
        )
        return BlockDistances(value, loo, n_samples, seed_base)


# ------------------------------------------------------------------------------- repeats of the service


def run_repeat(
    job: tuple[str, list[str], int, dict[tuple[str, int], Landscape], str, bool],
) -> list[dict[str, Any]]:
    """One repeat of every study under one config: create, run one worker to the end, read the answers."""
    config, stage_args, repeat, lands, workdir, smooth = job
    import logging

    from skiptune.cli import main as cli
    from skiptune.search.experiment.state import load_experiment
    from skiptune.search.query import answer_of
    from skiptune.search.study import find_studies
    from skiptune.search.worker.loop import run_worker
    from skiptune.storage import open_storage

    logging.disable(logging.WARNING)
    url = f"sqlite:///{workdir}/{config}-{repeat}.db"
    for sampler, nfe in lands:
        args = [
            "study", "create", "--model", "demo", "--sampler", sampler, "--nfe", str(nfe),
            "--extractor", "fmnist-classifier", "--reference", "demo", "--n-samples", "2000",
            "--rungs", "500,2000", "--trials", "20", "--validate-samples", "8000", "--no-window",
            "--seed-base", str(repeat * 100000), "--seed", str(repeat), *stage_args, "--storage", url,
        ]  # fmt: skip
        assert cli(args) == 0, args

    def factory(net: Any, spec: Any, **_: Any) -> SurrogateObjective:
        key = (spec.sampler, spec.nfe)
        return SurrogateObjective(spec, lands[key], NOISE[key], smooth=smooth)

    run_worker(
        url, model="demo", device="cpu", heartbeat=None, grace=None, objective_factory=factory, seed=repeat
    )
    storage, rows = open_storage(url), []
    for study in find_studies(storage):
        exp = load_experiment(storage, study)
        answer = answer_of(exp)
        assert answer is not None
        key = (study.spec.sampler, study.spec.nfe)
        land = lands[key]
        rows.append(
            dict(
                config=config,
                sampler=key[0],
                nfe=key[1],
                repeat=repeat,
                status=answer.status,
                rho=[answer.rho_bottom, answer.rho_top],
                true_gain=1 - math.exp(land(answer.rho_bottom, answer.rho_top)),
                trials=sum(
                    1 for p in exp.phases for t in p.trials if t.user_attrs.get("skiptune_role") != "prior"
                ),
                found_gain=max(
                    1 - math.exp(land(t.params["rho_bottom"], t.params["rho_top"]))
                    for p in exp.phases
                    for t in p.trials
                    if t.state.name == "COMPLETE"
                ),
            )
        )
    return rows


def summarise(rows: list[dict[str, Any]], lands: dict[tuple[str, int], Landscape]) -> list[dict[str, Any]]:
    out = []
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["config"], r["sampler"], r["nfe"])].append(r)
    for (config, sampler, nfe), rs in sorted(groups.items()):
        se = NOISE[(sampler, nfe)]
        top = max(r["true_gain"] for r in rs)
        optimum = lands[(sampler, nfe)].best()[2]
        within = sum(r["true_gain"] >= top - se for r in rs)
        missed = sum(r["status"] == "no-gain" and optimum >= 2 * se for r in rs)
        out.append(
            dict(
                config=config,
                sampler=sampler,
                nfe=nfe,
                repeats=len(rs),
                optimum=optimum,
                best_repeat=top,
                mean_gain=float(np.mean([r["true_gain"] for r in rs])),
                worst_gain=min(r["true_gain"] for r in rs),
                within_1se=within,
                missed_no_gain=missed,
                below_optimum_1se=sum(r["true_gain"] < optimum - se for r in rs),
                mean_trials=float(np.mean([r["trials"] for r in rs])),
                mean_found=float(np.mean([r["found_gain"] for r in rs])),
                validated=sum(r["status"] == "validated" for r in rs),
            )
        )
    return out


def markdown(summary: list[dict[str, Any]]) -> str:
    lines = [
        "| config | study | optimum | repeats | mean true gain | worst | within 1 s.e. of best repeat | "
        "more than 1 s.e. below optimum | no-gain that misses | search trials | best pair tried (mean) | "
        "validated |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        n = s["repeats"]
        cells = [
            s["config"], f"{s['sampler']} NFE {s['nfe']}", f"{100 * s['optimum']:+.1f}%", str(n),
            f"{100 * s['mean_gain']:+.1f}%", f"{100 * s['worst_gain']:+.1f}%", f"{s['within_1se']}/{n}",
            f"{s['below_optimum_1se']}/{n}", f"{s['missed_no_gain']}/{n}", f"{s['mean_trials']:.1f}",
            f"{100 * s['mean_found']:+.1f}%", f"{s['validated']}/{n}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--db", type=Path, action="append", help="GPU runs' databases (default: docs/results)")
    p.add_argument("--config", action="append", default=[], help='NAME="study create options" (repeatable)')
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--first-repeat", type=int, default=0)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument(
        "--noise",
        choices=("independent", "smooth"),
        default="independent",
        help="per block: independent for every pair, or a smooth random function of the pair",
    )
    p.add_argument("--studies", default=",".join(f"{s}:{n}" for s, n in STUDIES), help="sampler:nfe,...")
    p.add_argument("--flat", action="store_true", help="no pair helps (noise only): false positives")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args()
    rows = log_ratios(args.db or DEFAULT_DBS)
    keys = [(s, int(n)) for s, n in (x.split(":") for x in args.studies.split(","))]
    lands = {k: Landscape.fit(rows[k], BEST_GAIN[k]) for k in keys}
    for land in lands.values():
        land.flat = args.flat
    for k, land in lands.items():
        b = land.best()
        print(
            f"{k[0]} NFE {k[1]}: {len(rows[k])} trials, scales {land.scales}, "
            f"optimum ({b[0]:.3f}, {b[1]:.3f}) {100 * b[2]:+.1f}%, shrink {land.shrink:.2f}",
            flush=True,
        )
    configs = [c.split("=", 1) for c in (args.config or ["default="])]
    with tempfile.TemporaryDirectory() as work:
        smooth = args.noise == "smooth"
        jobs = [
            (name, shlex.split(extra), r, lands, work, smooth)
            for name, extra in configs
            for r in range(args.first_repeat, args.first_repeat + args.repeats)
        ]
        with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
            results = [row for rs in pool.imap_unordered(run_repeat, jobs) for row in rs]
    summary = summarise(results, lands)
    args.out.write_text(json.dumps({"rows": results, "summary": summary}, indent=1))
    text = markdown(summary)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
