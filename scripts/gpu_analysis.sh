#!/usr/bin/env bash
# `skiptune analyze` on the demo model for given pairs, then a held-out check of each suggested sigma window
# (docs/analysis.md), on one CUDA GPU, in one call and one Python process (no per-command start-up).
#
#   scripts/gpu_analysis.sh OUTDIR [NFE:RB,RT ...]      (default: 5:0.485,0.328 9:1.163,0.849 35:0.9,1.0)
#
# Per pair: OUTDIR/analysis_nfe<NFE>.json and .png (N_IMAGES real Fashion-MNIST test images, the default
# 24-point sigma grid), then `skiptune eval` (Heun at that NFE, EVAL_SAMPLES samples from seed SEED_BASE, a
# seed block no study uses) of the pair in its window, the pair at every sigma and the baseline (1, 1):
# OUTDIR/eval_nfe<NFE>_{window,full,baseline}.json; OUTDIR/summary.json collects the distances.
# Env (defaults): N_IMAGES (2000), SIGMAS (the default grid), EVAL_SAMPLES (10000), SEED_BASE (2000000000),
# BATCH (2000), DEVICE (cuda). CPU smoke run: DEVICE=cpu N_IMAGES=16 SIGMAS=0.1,1,10 EVAL_SAMPLES=16 BATCH=16.
set -uo pipefail
OUTDIR=${1:?usage: scripts/gpu_analysis.sh OUTDIR [NFE:RB,RT ...]}
shift
PAIRS=("$@")
[ ${#PAIRS[@]} -gt 0 ] || PAIRS=(5:0.485,0.328 9:1.163,0.849 35:0.9,1.0)
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1
[ "${DEVICE:-cuda}" = cpu ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
start=$(date +%s)
python3 - "$OUTDIR" "${PAIRS[@]}" <<'PY'
import contextlib, json, os, sys, time
from skiptune.cli import main

out, pairs = sys.argv[1], sys.argv[2:]
device, batch = os.environ.get("DEVICE", "cuda"), os.environ.get("BATCH", "2000")
common = ["--model", "demo", "--sampler", "heun", "--device", device, "--batch-size", batch]
evaluate = ["--extractor", "fmnist-classifier", "--reference", "demo", "--no-progress", "--json",
            "--n-samples", os.environ.get("EVAL_SAMPLES", "10000"),
            "--seed-base", os.environ.get("SEED_BASE", "2000000000")]
sigmas = ["--sigmas", os.environ["SIGMAS"]] if os.environ.get("SIGMAS") else []


def run(argv, path):
    t = time.time()
    with open(path, "w") as f, contextlib.redirect_stdout(f):
        code = main(argv)
    if code:
        sys.exit(f"skiptune {' '.join(argv)}: exit {code}")
    print(f"{os.path.basename(path)}: {time.time() - t:.1f} s", flush=True)
    return json.load(open(path))


summary, baselines = [], {}
for item in pairs:
    try:
        nfe, rho = item.split(":")
        rb, rt = rho.split(",")
        float(rb), float(rt), int(nfe)
    except ValueError:
        sys.exit(f"bad pair {item!r}: expected NFE:RB,RT, e.g. 5:0.485,0.328")
    stem = f"{out}/analysis_nfe{nfe}"
    analysis = run(["analyze", *common, "--rho", rb, rt, "--nfe", nfe, "--json", "--out", f"{stem}.png",
                    "--n-images", os.environ.get("N_IMAGES", "2000"), *sigmas], f"{stem}.json")
    comparison = analysis["comparisons"][0]
    window = comparison["window"]
    base = ["eval", *common, "--nfe", nfe, *evaluate]
    fd = {}
    if nfe not in baselines:
        baselines[nfe] = run([*base, "--rho", "1", "1"], f"{out}/eval_nfe{nfe}_baseline.json")
    fd["baseline"] = baselines[nfe]["results"][-1]["distance"]
    fd["full"] = run([*base, "--rho", rb, rt], f"{out}/eval_nfe{nfe}_full.json")["results"][-1]["distance"]
    if window is not None:
        w = ["--sigma-window", f"{window['lo']:.6g}", f"{window['hi']:.6g}"]
        fd["window"] = run([*base, "--rho", rb, rt, *w], f"{out}/eval_nfe{nfe}_window.json")["results"][-1]["distance"]
    row = {"nfe": int(nfe), "rho": [float(rb), float(rt)], "window": window, "fd": fd,
           "sampler_sigmas_in_window": comparison.get("sampler_sigmas_in_window"),
           "pixel_ratio": [r["pixel_ratio"] for r in comparison["rows"]],
           "feature_ratio": [r["feature_ratio"] for r in comparison["rows"]], "sigmas": analysis["sigmas"]}
    summary.append(row)
    print(json.dumps({k: row[k] for k in ("nfe", "rho", "window", "fd", "sampler_sigmas_in_window")}), flush=True)
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
PY
status=$?
echo "total: $(( $(date +%s) - start )) s (exit $status)"
exit $status
