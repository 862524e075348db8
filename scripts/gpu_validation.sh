#!/usr/bin/env bash
# Validation-stage measurements on one CUDA GPU (docs/results.md): the calibration of the jackknife standard
# error (benchmarks/validation_calibration.py) and the cost of cheap searches to a validated answer against
# the NFE-9 dense grid (benchmarks/validated_cost.py).
#
#   scripts/gpu_validation.sh OUTDIR
#
# Env (defaults): PAIRS ("5:0.485,0.328;9:1.163,0.849;19:0.876,1.024": the validated answers of
# scripts/gpu_results.sh), POOL (400000), REPLICATES (20), BLOCKS (10), BATCH (2000), WORKERS (3),
# COST_CONFIGS (";"-separated `study create` options of the cheap searches).
set -uo pipefail
OUTDIR=${1:?usage: scripts/gpu_validation.sh OUTDIR}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1
if command -v skiptune >/dev/null; then ST=(skiptune); else ST=(python3 -m skiptune); fi
DB="sqlite:///$(realpath "$OUTDIR")/cost.db"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
start=$(date +%s)
IFS=';' read -r -a CONFIGS <<< "${COST_CONFIGS:---n-samples 2000 --rungs 500,2000 --trials 24 --validate-samples 4000;--n-samples 1000 --rungs 250,1000 --trials 40 --validate-samples 4000}"
for config in "${CONFIGS[@]}"; do
    read -r -a OPTS <<< "$config"
    "${ST[@]}" study create --model demo --sampler heun --nfe 9 --extractor fmnist-classifier --reference demo \
        "${OPTS[@]}" --growth-trials 0 --storage "$DB" --json >> "$OUTDIR/cost_studies.json" || exit 1
done
devices=$(python3 -c "print(','.join(['0'] * ${WORKERS:-3}))")
timeout -s TERM 240 "${ST[@]}" worker --model demo --devices "$devices" --batch-size "${BATCH:-2000}" \
    --heartbeat 10 --grace 60 --storage "$DB" > "$OUTDIR/cost_workers.log" 2>&1
echo "cost searches: exit $? after $(( $(date +%s) - start )) s"
"${ST[@]}" table --model demo --storage "$DB"
i=0
for name in $(python3 -c "import json,re; print(' '.join(re.findall(r'\"name\": \"([^\"]+)\"', open('$OUTDIR/cost_studies.json').read())))"); do
    python3 benchmarks/validated_cost.py --storage "$DB" --study "$name" --grid-best 1.1125,0.85 \
        --grid-value 2.3636 --grid-se 0.0192 --grid-samples 810000 --batch-size "${BATCH:-2000}" \
        --out "$OUTDIR/cost$i.json" | grep -E '"(total|fraction_of_grid|recommended|grid_best|within.*)"'
    i=$((i + 1))
done
python3 benchmarks/validation_calibration.py --fast --pairs "${PAIRS:-5:0.485,0.328;9:1.163,0.849;19:0.876,1.024}" \
    --pool "${POOL:-400000}" --replicates "${REPLICATES:-20}" --blocks "${BLOCKS:-10}" \
    --batch-size "${BATCH:-2000}" --device cuda --out "$OUTDIR/calibration.json"
echo "total: $(( $(date +%s) - start )) s"
