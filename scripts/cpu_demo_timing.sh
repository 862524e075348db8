#!/usr/bin/env bash
# `skiptune demo` (the `make demo` defaults) timed on 2 CPU cores with nothing else running: several demos
# at once on the device host, each pinned (taskset) to its own pair of cores, so each sees exactly the
# 2 cores of the development machine. The GPU is not used. Prints each demo's table and time, whether
# the repeated seed gave the same table, and the load average.
#
#   scripts/cpu_demo_timing.sh OUTDIR            # SEEDS="0 0 1 2" (seed 0 twice: the same table?)
#
# OUTDIR gets one log per demo (demoI.log); the demos' folders (database, worker logs, PNGs) go to
# WORKDIR (default /tmp/cpu_demo), so a device call brings back only the logs.
#
# Where optuna & co. are missing, carry .whl (see scripts/gpu_throughput.sh); the demo needs no data set.
set -uo pipefail
OUTDIR=${1:?usage: scripts/cpu_demo_timing.sh OUTDIR}
WORKDIR=${WORKDIR:-/tmp/cpu_demo}
mkdir -p "$OUTDIR" "$WORKDIR"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} CUDA_VISIBLE_DEVICES=
read -r -a SEEDS <<< "${SEEDS:-0 0 1 2}"
read -r -a EXTRA <<< "${DEMO_ARGS:-}"  # other demo options (a smoke run: smaller sizes)
echo "host: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
i=0
for seed in "${SEEDS[@]}"; do
    cores="$((2 * i)),$((2 * i + 1))"
    (
        start=$(date +%s)
        taskset -c "$cores" python3 -m skiptune demo "${EXTRA[@]}" --seed "$seed" --out "$WORKDIR/demo$i" > "$OUTDIR/demo$i.log" 2>&1
        echo "demo$i: seed $seed on cores $cores: exit $? after $(( $(date +%s) - start )) s"
    ) &
    i=$((i + 1))
done
wait
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
for log in "$OUTDIR"/demo*.log; do
    echo "== $log"
    sed -n '/^\[2\/4\]/,$p' "$log" | grep -v '^\(query\|sample\|watch\):'
done
table() { sed -n '/^\[4\/4\]/,/^done in/p' "$1" | grep -v '^done in'; }
if [ "${#SEEDS[@]}" -ge 2 ] && [ "${SEEDS[0]}" = "${SEEDS[1]}" ]; then
    if diff <(table "$OUTDIR/demo0.log") <(table "$OUTDIR/demo1.log") >/dev/null; then
        echo "seed ${SEEDS[0]} twice: the same table"
    else
        echo "seed ${SEEDS[0]} twice: DIFFERENT tables"
    fi
fi
