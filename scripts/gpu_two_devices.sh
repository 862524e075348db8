#!/usr/bin/env bash
# Issue 15 part 1: the worker service on one and on two GPUs of one host (SQLite), demo model.
#
#   scripts/gpu_two_devices.sh OUTDIR
#
# Two configurations on fresh, identical study sets: `skiptune worker --devices 0` and
# `skiptune worker --devices 0,1`, each for WALL seconds (then SIGTERM: trials in flight are given back).
# nvidia-smi's per-process GPU use is sampled every 2 s meanwhile. benchmarks/two_devices.py then
# writes OUTDIR/two_devices.json: trials (and samples) per hour of both, their ratio (goal >= 1.9),
# the device of every worker process (trial attribute skiptune_worker = host:pid:index; worker index i
# runs on the i-th listed GPU) and the GPUs nvidia-smi saw each pid on, and params evaluated twice (0).
# About 2 x (WALL + 20) s: under 6 minutes with the defaults.
#
# Env (defaults): WALL (120), NFES (5,9,19), N_SAMPLES (4000), TRIALS (2000 per study: never met in
# WALL), BATCH (2000), PRECISION (auto), ONE (0), TWO (0,1).
# CPU smoke test (no GPU): CPU_SMOKE=1 WALL=20 N_SAMPLES=64 BATCH=64 runs one `--device cpu` process
# per listed device instead of `--devices` (everything else is the same).
set -uo pipefail
OUTDIR=${1:?usage: scripts/gpu_two_devices.sh OUTDIR}
mkdir -p "$OUTDIR"
OUTDIR=$(realpath "$OUTDIR")
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if command -v skiptune >/dev/null; then ST=(skiptune); else ST=(python3 -m skiptune); fi
PY=${PYTHON:-python3}
WALL=${WALL:-120}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
nvidia-smi --query-gpu=index,uuid --format=csv,noheader > "$OUTDIR/gpus.csv" 2>/dev/null || true

sample_gpus() {  # $1: output CSV; one line per compute process every 2 s, prefixed by the time
    while :; do
        nvidia-smi --query-compute-apps=pid,used_memory,gpu_uuid --format=csv,noheader 2>/dev/null | \
            sed "s/^/$(date +%s),/" >> "$1"
        sleep 2
    done
}

run_config() {  # $1: label, $2: device list
    local db="$OUTDIR/$1.db" apps="$OUTDIR/apps_$1.csv"
    rm -f "$db" "$apps"
    "${ST[@]}" study create --model demo --sampler heun --nfe "${NFES:-5,9,19}" --extractor fmnist-classifier \
        --reference demo --n-samples "${N_SAMPLES:-4000}" --trials "${TRIALS:-2000}" --no-validate \
        --storage "sqlite:///$db" > "$OUTDIR/studies_$1.txt" || exit 1
    sample_gpus "$apps" &
    local sampler=$!
    local common=(--model demo --batch-size "${BATCH:-2000}" --precision "${PRECISION:-auto}"
                  --heartbeat 10 --grace 60 --storage "sqlite:///$db")
    local start=$(date +%s) pids=()
    if [ -n "${CPU_SMOKE:-}" ]; then  # no GPU: one CPU worker process per listed device
        IFS=',' read -r -a devs <<< "$2"
        for i in "${!devs[@]}"; do
            timeout -s TERM "$WALL" "${ST[@]}" worker "${common[@]}" --device cpu \
                > "$OUTDIR/workers_$1_$i.log" 2>&1 &
            pids+=($!)
        done
    else
        timeout -s TERM "$WALL" "${ST[@]}" worker "${common[@]}" --devices "$2" > "$OUTDIR/workers_$1.log" 2>&1 &
        pids+=($!)
    fi
    for p in "${pids[@]}"; do wait "$p"; done
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
    echo "$1 (--devices $2): workers stopped after $(( $(date +%s) - start )) s"
}

run_config one "${ONE:-0}"
run_config two "${TWO:-0,1}"
"$PY" benchmarks/two_devices.py --gpus "$OUTDIR/gpus.csv" --wall "$WALL" --out "$OUTDIR/two_devices.json" \
    --run "one:sqlite:///$OUTDIR/one.db:${ONE:-0}:$OUTDIR/apps_one.csv" \
    --run "two:sqlite:///$OUTDIR/two.db:${TWO:-0,1}:$OUTDIR/apps_two.csv"
