#!/usr/bin/env bash
# The first real results on the demo model (docs/results.md), on one CUDA GPU, in one call:
# the search service itself (`skiptune study create` + `skiptune worker`, SQLite), then the held-out
# re-evaluations, the NFE-9 grid and the fp32-vs-fast comparison (benchmarks/demo_results.py).
#
#   scripts/gpu_results.sh OUTDIR
#
# Env (defaults): SEARCH_SECONDS (330: wall-clock budget of the search; workers stop cleanly on
# SIGTERM and release their trial), WORKERS (3 worker processes sharing the GPU), BATCH (2000),
# TRIALS (30), N_SAMPLES (10000), RUNGS (2000,10000), REEVAL_SAMPLES (50000), PARTS (precision,grid,reeval),
# PARTS_SECONDS (200: budget for benchmarks/demo_results.py).
set -uo pipefail
OUTDIR=${1:?usage: scripts/gpu_results.sh OUTDIR}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1
# the installed console script, else the package from this checkout (a bare GPU machine)
if command -v skiptune >/dev/null; then ST=(skiptune); else ST=(python3 -m skiptune); fi
DB="sqlite:///$(realpath "$OUTDIR")/results.db"
TRIALS=${TRIALS:-30}
COMMON=(--extractor fmnist-classifier --reference demo --n-samples "${N_SAMPLES:-10000}"
        --rungs "${RUNGS:-2000,10000}" --trials "$TRIALS" --storage "$DB")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"${ST[@]}" study create --model demo --sampler heun --nfe 5,7,9,13,19,35 "${COMMON[@]}" || exit 1
"${ST[@]}" study create --model demo --sampler dpmpp_2m --nfe 5,10 "${COMMON[@]}" || exit 1
devices=$(python3 -c "print(','.join(['0'] * ${WORKERS:-3}))")
start=$(date +%s)
timeout -s TERM "${SEARCH_SECONDS:-330}" "${ST[@]}" worker --model demo --devices "$devices" \
    --batch-size "${BATCH:-2000}" --heartbeat 10 --grace 60 --storage "$DB" > "$OUTDIR/workers.log" 2>&1
echo "search: exit $? after $(( $(date +%s) - start )) s"
"${ST[@]}" table --model demo --storage "$DB"
timeout -s TERM "${PARTS_SECONDS:-200}" python3 benchmarks/demo_results.py --storage "$DB" \
    --out "$OUTDIR/results.json" --batch-size "${BATCH:-2000}" --parts "${PARTS:-precision,grid,reeval}" \
    --reeval-samples "${REEVAL_SAMPLES:-50000}" 2>&1 | tee "$OUTDIR/demo_results.log"
echo "total: $(( $(date +%s) - start )) s"
