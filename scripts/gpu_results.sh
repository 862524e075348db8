#!/usr/bin/env bash
# The demo results with validation on (docs/results.md), on one CUDA GPU, in one call: the service itself
# (`skiptune study create` with its default held-out validation and box growth, `skiptune worker`, SQLite),
# the answer per study, the report PNGs, and the cost of a small search to a validated answer against
# the NFE-9 dense grid of docs/results.md (benchmarks/validated_cost.py).
#
#   scripts/gpu_results.sh OUTDIR
#
# Env (defaults): SEARCH_SECONDS (420: wall-clock budget of the workers; they stop cleanly on SIGTERM and
# release their trial), WORKERS (3 worker processes sharing the GPU), BATCH (2000), TRIALS (30),
# N_SAMPLES (10000), RUNGS (2000,10000); for a CPU smoke run: COST_ARGS, WORKER_DEVICES, GRID_N.
set -uo pipefail
OUTDIR=${1:?usage: scripts/gpu_results.sh OUTDIR}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1
if command -v skiptune >/dev/null; then ST=(skiptune); else ST=(python3 -m skiptune); fi
DB="sqlite:///$(realpath "$OUTDIR")/results.db"
COMMON=(--extractor fmnist-classifier --reference demo --n-samples "${N_SAMPLES:-10000}"
        --rungs "${RUNGS:-2000,10000}" --trials "${TRIALS:-30}" --storage "$DB")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"${ST[@]}" study create --model demo --sampler heun --nfe 5,7,9,13,19,35 "${COMMON[@]}" || exit 1
"${ST[@]}" study create --model demo --sampler dpmpp_2m --nfe 5,10 "${COMMON[@]}" || exit 1
# The cost study: a small search + validation at Heun NFE 9 (its own objective: 4,000 samples a trial).
read -r -a COST <<< "${COST_ARGS:---n-samples 4000 --rungs 1000,4000 --trials 12 --validate-samples 8000}"
"${ST[@]}" study create --model demo --sampler heun --nfe 9 --extractor fmnist-classifier --reference demo \
    "${COST[@]}" --growth-trials 0 --storage "$DB" --json > "$OUTDIR/cost_study.json" || exit 1
devices=$(python3 -c "print(','.join(['0'] * ${WORKERS:-3}))")
read -r -a WHERE <<< "${WORKER_DEVICES:---devices $devices}"
start=$(date +%s)
timeout -s TERM "${SEARCH_SECONDS:-420}" "${ST[@]}" worker --model demo "${WHERE[@]}" \
    --batch-size "${BATCH:-2000}" --heartbeat 10 --grace 60 --storage "$DB" > "$OUTDIR/workers.log" 2>&1
echo "workers: exit $? after $(( $(date +%s) - start )) s"
"${ST[@]}" table --model demo --storage "$DB"
"${ST[@]}" table --model demo --storage "$DB" --json > "$OUTDIR/table.json"
"${ST[@]}" report --model demo --storage "$DB" --out "$OUTDIR/report" > /dev/null
cost=$(python3 -c "import json; print(json.load(open('$OUTDIR/cost_study.json'))[0]['name'])")
python3 benchmarks/validated_cost.py --storage "$DB" --study "$cost" --grid-best 1.1125,0.85 \
    --grid-value 2.3636 --grid-se 0.0192 --grid-samples 810000 --batch-size "${BATCH:-2000}" \
    --grid-n "${GRID_N:-10000}" --device "${COST_DEVICE:-auto}" --out "$OUTDIR/cost.json" | tail -n 12
echo "total: $(( $(date +%s) - start )) s"
