#!/usr/bin/env bash
# Train the bundled demo assets on one CUDA GPU and write them, with a JSON log, to OUTDIR.
#
#   scripts/gpu_train.sh OUTDIR            (from the repository root; about 9 minutes on an H100)
#
# Env (defaults): DATA (.data/fashion-mnist, else the Debian location), DEVICE (cuda), CLS_EPOCHS (15),
# DIFFUSION_SECONDS (420: the denoiser's training-time budget), EVAL_SAMPLES (10000), SEED (0),
# PYTHON (python3), and CLASSIFIER / REFERENCE / INIT + RESUME_IMAGES to reuse or continue earlier assets.
# Only `python -m skiptune.demo.training` is used; the statistics steps import torch-fidelity (through
# skiptune.objectives.frechet) and may fail where it is missing without losing the trained weights.
set -uo pipefail
OUTDIR=${1:?usage: scripts/gpu_train.sh OUTDIR}
DATA=${DATA:-.data/fashion-mnist}
[ -d "$DATA" ] || DATA=/usr/share/datasets/fashion-mnist
SECONDS_BUDGET=${DIFFUSION_SECONDS:-420}
DEVICE=${DEVICE:-cuda}              # a CPU smoke run: DEVICE=cpu DIFFUSION_SECONDS=10 CLS_EPOCHS=0.02 EVAL_SAMPLES=50
CLS_EPOCHS=${CLS_EPOCHS:-15}
EVAL_SAMPLES=${EVAL_SAMPLES:-10000}
SEED=${SEED:-0}
CLASSIFIER=${CLASSIFIER:-}          # reuse these weights instead of training a classifier
REFERENCE=${REFERENCE:-}            # reuse these reference statistics instead of computing them
INIT=${INIT:-}                      # continue the denoiser from these weights ...
RESUME_IMAGES=${RESUME_IMAGES:-0}   # ... which have seen this many training images
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUTDIR"
T="$PY -m skiptune.demo.training"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if [ -n "$CLASSIFIER" ]; then cp "$CLASSIFIER" "$OUTDIR/fmnist-classifier.pt"; else
$T classifier --data "$DATA" --device "$DEVICE" --epochs "$CLS_EPOCHS" --batch-size 256 \
   --out "$OUTDIR/fmnist-classifier.pt" --log-json "$OUTDIR/classifier.json" || exit 1
fi
$T diffusion --data "$DATA" --device "$DEVICE" --max-seconds "$SECONDS_BUDGET" --batch-size 512 --lr 1e-3 \
   --model-channels 32 --channel-mult 1,2,2 --num-blocks 1 --attn-resolutions "" --log-every 500 \
   --seed "$SEED" ${INIT:+--init "$INIT" --resume-images "$RESUME_IMAGES"} \
   --out "$OUTDIR/fmnist-edm.pt" --log-json "$OUTDIR/diffusion.json" || exit 1
if [ -n "$REFERENCE" ]; then cp "$REFERENCE" "$OUTDIR/fmnist-train-stats.npz"; else
$T reference-stats --data "$DATA" --device "$DEVICE" --classifier "$OUTDIR/fmnist-classifier.pt" \
   --out "$OUTDIR/fmnist-train-stats.npz" --log-json "$OUTDIR/reference.json" || echo "reference stats FAILED"
fi
$T evaluate --data "$DATA" --device "$DEVICE" --classifier "$OUTDIR/fmnist-classifier.pt" \
   --reference "$OUTDIR/fmnist-train-stats.npz" --model "$OUTDIR/fmnist-edm.pt" \
   --sampler heun --nfe 35 --samples "$EVAL_SAMPLES" --batch-size 1000 --log-json "$OUTDIR/evaluate.json" \
   || echo "evaluation FAILED"

# One log file: the per-step parts merged (fewer files to bring back).
$PY - "$OUTDIR" <<'PYEOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
log = {}
for part in ("classifier", "diffusion", "reference", "evaluate"):
    p = out / f"{part}.json"
    if p.is_file():
        log[part] = json.loads(p.read_text())
        p.unlink()
(out / "train-log.json").write_text(json.dumps(log, indent=2) + "\n")
print("wrote", out / "train-log.json")
PYEOF
ls -la "$OUTDIR"
