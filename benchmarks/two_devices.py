"""Results of scripts/gpu_two_devices.sh: trials per hour with one and with two GPUs, who ran where.

For each configuration (a fresh SQLite database that `skiptune worker --devices LIST` worked on for a fixed
wall time) this reads every evaluated trial (COMPLETE or PRUNED with a worker attribute ``host:pid:index``;
``--devices`` starts worker ``index`` on the ``index``-th listed GPU) and reports:

* trials and samples per hour over the whole wall time, and at steady state (each process from its first
  finished trial to its last: the compile warm-up of the fast path is left out);
* per process: pid, worker index, the device its index stands for, trials, and the GPU(s) nvidia-smi saw
  that pid on (``--query-compute-apps`` sampled during the run; in a container nvidia-smi may show other
  pids, then only the per-GPU memory is evidence);
* params evaluated twice within a study (must be 0).

    python benchmarks/two_devices.py --run one:sqlite:///o/one.db:0:o/apps_one.csv \\
        --run two:sqlite:///o/two.db:0,1:o/apps_two.csv --gpus o/gpus.csv --wall 120 --out o/two_devices.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunSpec:
    label: str
    url: str
    devices: list[str]
    apps: Path | None


def parse_run(text: str) -> RunSpec:
    """``LABEL:URL:DEVICES[:APPS_CSV]``; the URL is ``sqlite:///PATH`` (its colons are kept)."""
    label, _, rest = text.partition(":")
    url, _, tail = rest.partition(".db:")
    devices, _, apps = tail.partition(":")
    if not label or not url or not devices:
        raise SystemExit(f"bad --run {text!r}: expected LABEL:sqlite:///PATH.db:DEVICES[:APPS_CSV]")
    return RunSpec(label, url + ".db", devices.split(","), Path(apps) if apps else None)


def read_gpus(path: Path | None) -> dict[str, str]:
    """uuid -> index, from ``nvidia-smi --query-gpu=index,uuid --format=csv,noheader``."""
    if path is None or not path.exists():
        return {}
    rows = [r for r in csv.reader(path.read_text().splitlines()) if len(r) >= 2]
    return {r[1].strip(): r[0].strip() for r in rows}


def read_apps(path: Path | None, gpus: dict[str, str]) -> tuple[dict[str, set[str]], dict[str, float]]:
    """pid -> GPU indices seen, and GPU index -> peak MiB used by compute apps, from the sampled CSV."""
    by_pid: dict[str, set[str]] = defaultdict(set)
    peak: dict[str, float] = defaultdict(float)
    if path is None or not path.exists():
        return {}, {}
    for row in csv.reader(path.read_text().splitlines()):
        if len(row) < 4:  # time, pid, used_memory, gpu_uuid
            continue
        pid, used, uuid = row[1].strip(), row[2].strip(), row[3].strip()
        gpu = gpus.get(uuid, uuid)
        by_pid[pid].add(gpu)
        try:
            peak[gpu] = max(peak[gpu], float(used.split()[0]))
        except ValueError:
            continue
    return dict(by_pid), dict(peak)


def analyse(run: RunSpec, gpus: dict[str, str], wall: float) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    from skiptune.search.records import WORKER_ATTR
    from skiptune.search.study import find_studies

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(run.url)
    evaluated, duplicates = [], 0
    for s in find_studies(storage):
        trials = storage.get_all_trials(s.study_id, deepcopy=False)
        mine = [
            t
            for t in trials
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and WORKER_ATTR in t.user_attrs
        ]
        duplicates += sum(n - 1 for n in Counter(tuple(sorted(t.params.items())) for t in mine).values())
        evaluated += mine
    apps, peak = read_apps(run.apps, gpus)
    per_process: dict[str, dict[str, Any]] = {}
    for t in evaluated:
        _host, pid, index = str(t.user_attrs[WORKER_ATTR]).rsplit(":", 2)
        p = per_process.setdefault(
            pid, {"pid": int(pid), "index": int(index), "trials": 0, "samples": 0, "ends": []}
        )
        p["device"] = run.devices[int(index)] if int(index) < len(run.devices) else None
        p["trials"] += 1
        p["samples"] += max(t.intermediate_values, default=0)
        p["ends"].append(t.datetime_complete.timestamp())
    steady_trials = steady_samples = 0.0
    for p in per_process.values():
        ends = sorted(p.pop("ends"))
        p["nvidia_smi_gpus"] = sorted(apps.get(str(p["pid"]), set())) or None
        if len(ends) > 1 and ends[-1] > ends[0]:
            p["steady_trials_per_hour"] = round((len(ends) - 1) * 3600 / (ends[-1] - ends[0]), 1)
            steady_trials += p["steady_trials_per_hour"]
            steady_samples += (p["samples"] * (len(ends) - 1) / len(ends)) * 3600 / (ends[-1] - ends[0])
    return {
        "label": run.label,
        "devices": run.devices,
        "trials": len(evaluated),
        "samples": int(sum(p["samples"] for p in per_process.values())),
        "trials_per_hour": round(len(evaluated) * 3600 / wall, 1),
        "steady_trials_per_hour": round(steady_trials, 1),
        "steady_samples_per_hour": round(steady_samples),
        "processes": sorted(per_process.values(), key=lambda p: p["index"]),
        "gpu_peak_mib": peak or None,
        "duplicates": duplicates,
        "own_gpu_each": _own_gpu_each(per_process, run.devices),
    }


def _own_gpu_each(per_process: dict[str, dict[str, Any]], devices: list[str]) -> bool | None:
    """True when every process was seen by nvidia-smi on exactly its own device (None: nothing seen)."""
    seen = [p for p in per_process.values() if p["nvidia_smi_gpus"]]
    if not seen:
        return None
    return all(p["nvidia_smi_gpus"] == [str(p["device"]).removeprefix("cuda:")] for p in seen) and len(
        seen
    ) == len(per_process)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--run", action="append", type=parse_run, required=True, help="LABEL:URL:DEVICES[:APPS_CSV]"
    )
    p.add_argument("--gpus", type=Path, default=None, help="nvidia-smi --query-gpu=index,uuid CSV")
    p.add_argument("--wall", type=float, required=True, help="seconds each configuration ran")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    gpus = read_gpus(args.gpus)
    runs = [analyse(r, gpus, args.wall) for r in args.run]
    out: dict[str, Any] = {"wall_s": args.wall, "runs": runs}
    if len(runs) == 2 and runs[0]["trials_per_hour"]:
        one, two = runs
        out["ratio_trials_per_hour"] = round(two["trials_per_hour"] / one["trials_per_hour"], 3)
        if one["steady_trials_per_hour"]:
            out["ratio_steady_trials_per_hour"] = round(
                two["steady_trials_per_hour"] / one["steady_trials_per_hour"], 3
            )
        if one["steady_samples_per_hour"]:
            out["ratio_steady_samples_per_hour"] = round(
                two["steady_samples_per_hour"] / one["steady_samples_per_hour"], 3
            )
    out["no_duplicates"] = all(r["duplicates"] == 0 for r in runs)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}))
    for r in runs:
        print(json.dumps({k: v for k, v in r.items() if k != "processes"}))
        for proc in r["processes"]:
            print("   ", json.dumps(proc))
    return 0 if out["no_duplicates"] else 1


if __name__ == "__main__":
    sys.exit(main())
