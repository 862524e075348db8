#!/usr/bin/env bash
# docs/performance.md's measurements on one CUDA GPU, in one call: both of issue 7's configs, each in
# its own process (one compile cache, one cuDNN autotuning state), JSON and logs written to OUTDIR.
#
#   scripts/gpu_throughput.sh OUTDIR [EDM_SOURCE]       (EDM_SOURCE: a local NVlabs/edm snapshot, .edm)
#
# About 6.5 minutes on an H100 (per config two compiles of 20-60 s: with and without the fused group
# norm). DUMP_CODE=1 also copies Inductor's generated
# code (the Triton kernels the profile names) to OUTDIR/code.
#
# Env: MODES_CIFAR, MODES_ADM (comma lists of benchmarks/sampling_throughput.py modes), LIMIT_CIFAR and
# LIMIT_ADM (seconds per config; 270 and 310), CONFIGS (default "ddpmpp-cifar10 adm-imagenet64").
set -uo pipefail
OUTDIR=${1:?usage: scripts/gpu_throughput.sh OUTDIR [EDM_SOURCE]}
EDM=${2:-.edm}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then  # torch-fidelity for the objective mode, where not installed
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
DEFAULT_MODES=gemm,bf16-cl-compile-unfused,edm-fp32,edm-fp16,bf16-cl-compile,skip-on,profile,objective
for config in ${CONFIGS:-ddpmpp-cifar10 adm-imagenet64}; do
    case $config in
        ddpmpp-cifar10) modes=${MODES_CIFAR:-$DEFAULT_MODES}; repeats=3; limit=${LIMIT_CIFAR:-270} ;;
        adm-imagenet64) modes=${MODES_ADM:-$DEFAULT_MODES}; repeats=2; limit=${LIMIT_ADM:-310} ;;
        *) modes=$DEFAULT_MODES; repeats=3; limit=300 ;;
    esac
    touch "$OUTDIR/.start"
    timeout -s INT "$limit" python3 benchmarks/sampling_throughput.py --edm-source "$EDM" \
        --config "$config" --repeats "$repeats" --modes "$modes" --out "$OUTDIR/$config.json" \
        2>&1 | tee "$OUTDIR/$config.log"
    echo "$config: exit ${PIPESTATUS[0]}"
    if [ -n "${DUMP_CODE:-}" ]; then  # Inductor's generated code (Triton kernels), largest files first
        mkdir -p "$OUTDIR/code"
        find /tmp/torchinductor_* -name '*.py' -size +100k -newer "$OUTDIR/.start" 2>/dev/null | \
            xargs -r ls -S | head -4 | \
            while read -r f; do cp "$f" "$OUTDIR/code/$config-$(basename "$f")"; done
    fi
done
