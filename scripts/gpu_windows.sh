#!/usr/bin/env bash
# The window stage and run-to-run agreement (docs/results.md), on one CUDA GPU, in one call: REPEATS
# independent runs of the demo's studies (each repeat its own --seed-base, so its own search and held-out
# seeds, and its own worker TPE seeds), with the service's defaults (validation, growth, refinement, window
# stage), then every repeat's answer checked on an unseen block of seeds (benchmarks/window_repeats.py).
#
#   scripts/gpu_windows.sh OUTDIR
#
# Writes OUTDIR/windows.db, workers.log, table_<r>.json, windows.json and windows.md (the table for
# docs/results.md). Env (defaults): REPEATS (3), STUDIES ("heun:9,13,19,35;dpmpp_2m:10"), N_SAMPLES
# (2000), RUNGS (500,2000), TRIALS (20), VALIDATE_SAMPLES (8000), STAGE_ARGS (extra `study create`
# options, e.g. "--window-trials 24"), SEARCH_SECONDS (360: the workers' wall-clock cap; they stop
# cleanly on SIGTERM, and studies still running then show `validating`), WORKERS (3 processes sharing the
# GPU), BATCH (2000), UNSEEN (20000 seeds from 3,000,000,000), BLOCKS (10), DEVICE (auto).
# Two device calls when one is too short: RESUME=PATH copies an earlier run's windows.db (its studies, trials
# and finished stages) into OUTDIR and skips `study create`, so the workers go on where that run stopped;
# CHECK=0 runs the workers only (no unseen-seed checks). Measured on one H100 (2026-12-08): 320 s of
# workers took every study through search and a first validation round but left 9 of 15 in refinement or
# the window stage (how much longer they need is not known yet); the checks then took 156 s.
# CPU smoke run: DEVICE=cpu WORKER_DEVICES="--device cpu" STUDIES="heun:5" N_SAMPLES=16 RUNGS=16 TRIALS=3
#   VALIDATE_SAMPLES=40 UNSEEN=40 BLOCKS=4 BATCH=16 STAGE_ARGS="--validate-blocks 4" REPEATS=2
set -uo pipefail
OUTDIR=${1:?usage: scripts/gpu_windows.sh OUTDIR}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1
if command -v skiptune >/dev/null; then ST=(skiptune); else ST=(python3 -m skiptune); fi
PY=${PYTHON:-python3}
DB="sqlite:///$(realpath "$OUTDIR")/windows.db"
[ "${DEVICE:-auto}" = cpu ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
start=$(date +%s)
read -r -a STAGE <<< "${STAGE_ARGS:-}"
IFS=';' read -r -a GROUPS_ <<< "${STUDIES:-heun:9,13,19,35;dpmpp_2m:10}"
if [ -n "${RESUME:-}" ]; then
    [ -s "$RESUME" ] || { echo "RESUME=$RESUME: no such database file; expected an earlier run's windows.db" >&2; exit 2; }
    [ "$(realpath "$RESUME")" = "$(realpath -m "$OUTDIR/windows.db")" ] || cp "$RESUME" "$OUTDIR/windows.db"
    echo "resuming $RESUME: $("${ST[@]}" table --model demo --storage "$DB" --json | "$PY" -c 'import json, sys; print(len(json.load(sys.stdin)), "studies")')"
fi
for r in $( [ -n "${RESUME:-}" ] || seq 0 $(( ${REPEATS:-3} - 1 )) ); do
    for group in "${GROUPS_[@]}"; do
        "${ST[@]}" study create --model demo --sampler "${group%%:*}" --nfe "${group#*:}" \
            --extractor fmnist-classifier --reference demo --n-samples "${N_SAMPLES:-2000}" \
            --rungs "${RUNGS:-500,2000}" --trials "${TRIALS:-20}" --validate-samples "${VALIDATE_SAMPLES:-8000}" \
            --seed-base $(( r * 100000 )) "${STAGE[@]}" --storage "$DB" > /dev/null || exit 1
    done
done
devices=$("$PY" -c "print(','.join(['0'] * ${WORKERS:-3}))")
read -r -a WHERE <<< "${WORKER_DEVICES:---devices $devices}"
timeout -s TERM "${SEARCH_SECONDS:-360}" "${ST[@]}" worker --model demo "${WHERE[@]}" \
    --batch-size "${BATCH:-2000}" --heartbeat 10 --grace 60 --storage "$DB" > "$OUTDIR/workers.log" 2>&1
echo "workers: exit $? after $(( $(date +%s) - start )) s"
"${ST[@]}" table --model demo --storage "$DB"
"${ST[@]}" table --model demo --storage "$DB" --json > "$OUTDIR/table.json"
[ "${CHECK:-1}" = 0 ] && { echo "total: $(( $(date +%s) - start )) s (CHECK=0: no unseen-seed checks)"; exit 0; }
"$PY" benchmarks/window_repeats.py --storage "$DB" --model demo --unseen-samples "${UNSEEN:-20000}" \
    --blocks "${BLOCKS:-10}" --batch-size "${BATCH:-2000}" --device "${DEVICE:-auto}" \
    --out "$OUTDIR/windows.json" --markdown "$OUTDIR/windows.md" || exit 1
echo "total: $(( $(date +%s) - start )) s"
