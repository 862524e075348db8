#!/usr/bin/env bash
# Train the latent text-conditional demo (`demo-latent`) on one CUDA GPU, measure it through diffusers'
# own StableDiffusionPipeline, and write to OUTDIR:
#   latent-demo.tar        the pipeline folder `latent/` (unpack into skiptune/demo/assets/ to ship it)
#   latent-demo.json       the log: sizes, losses, timings, prompt accuracy and Fréchet distances
#   latent-demo-stats.npz  each evaluation's feature mean/covariance (recompute the distance elsewhere)
#   latent-demo.log        the console output
#
#   scripts/gpu_latent_demo.sh OUTDIR              (about 6.5 minutes on an H100)
#   scripts/gpu_latent_demo.sh OUTDIR --smoke      (the whole path on a CPU: tiny networks, a few minutes)
#
# On a machine with torch but without the [diffusers] extra (the device machine), run
# `scripts/latent_carry.sh` first and carry .latent-carry: its site-pyVER.tar.xz (the python3 there's
# VER) is unpacked into /tmp/site and Fashion-MNIST from its fashion-mnist/*.xz into /tmp/fashion-mnist.
# Env (defaults): VAE_SECONDS (60), DENOISER_SECONDS (240), BATCH (512), LR (5e-4), EVAL
# (ddim:50:3,dpmpp_2m:10:3: scheduler:steps:guidance), EVAL_SAMPLES (10000), SEED (0), DEVICE (cuda; cpu
# with --smoke), DATA (a folder of the four *-ubyte.gz files), CARRY (.latent-carry), PYTHON (python3).
set -uo pipefail
OUTDIR=${1:?usage: scripts/gpu_latent_demo.sh OUTDIR [--smoke]}
SMOKE=${2:-}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUTDIR"
start=$(date +%s)
CARRY=${CARRY:-.latent-carry}
$PY - "$CARRY" <<'PYEOF' || exit 1
import gzip, importlib.util, lzma, pathlib, sys, tarfile
carry = pathlib.Path(sys.argv[1])
site = carry / f"site-py{sys.version_info.major}.{sys.version_info.minor}.tar.xz"
needed = ("diffusers", "transformers")
if site.is_file() and not all(importlib.util.find_spec(m) for m in needed):
    with tarfile.open(site) as tar:
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # 3.12+; older: trusted file
        tar.extractall("/tmp/site", **safe)
    print("unpacked", site, "into /tmp/site")
pillow = carry / f"pillow-py{sys.version_info.major}.{sys.version_info.minor}.tar.xz"
if pillow.is_file() and importlib.util.find_spec("PIL") is None:
    with tarfile.open(pillow) as tar:
        tar.extractall("/tmp/site", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    print("unpacked", pillow, "into /tmp/site")
data = pathlib.Path("/tmp/fashion-mnist")
for f in sorted((carry / "fashion-mnist").glob("*-ubyte.xz")):
    data.mkdir(parents=True, exist_ok=True)
    with gzip.open(data / (f.stem + ".gz"), "wb", compresslevel=1) as out:
        out.write(lzma.decompress(f.read_bytes()))
    print("unpacked", f, "into", data)
PYEOF
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
DATA=${DATA:-}
[ -z "$DATA" ] && ls /tmp/fashion-mnist/*-ubyte.gz >/dev/null 2>&1 && DATA=/tmp/fashion-mnist
[ -n "$DATA" ] || DATA=/usr/share/datasets/fashion-mnist
# torch-fidelity (with torchvision) only computes the distance; without it the log says why and
# latent-demo-stats.npz still has what it needs.
$PY -c "import diffusers, transformers, torch; print('python', __import__('sys').version.split()[0],
'torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)" || {
    echo "diffusers/transformers not importable: run scripts/latent_carry.sh, carry $CARRY" >&2
    exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
if [ "$SMOKE" = --smoke ]; then DEVICE=${DEVICE:-cpu}; EXTRA=(--smoke); else DEVICE=${DEVICE:-cuda}; EXTRA=(); fi
echo "setup: $(( $(date +%s) - start )) s"
rm -rf "$OUTDIR/latent"
$PY -m skiptune.demo.training.latent --out "$OUTDIR/latent" --data "$DATA" --device "$DEVICE" \
    --seed "${SEED:-0}" --vae-seconds "${VAE_SECONDS:-60}" --denoiser-seconds "${DENOISER_SECONDS:-240}" \
    --batch-size "${BATCH:-512}" --lr "${LR:-5e-4}" --eval "${EVAL:-ddim:50:3,dpmpp_2m:10:3}" \
    --eval-samples "${EVAL_SAMPLES:-10000}" --log-json "$OUTDIR/latent-demo.json" \
    --stats "$OUTDIR/latent-demo-stats.npz" "${EXTRA[@]}" 2>&1 | tee "$OUTDIR/latent-demo.log"
rc=${PIPESTATUS[0]}
if [ -f "$OUTDIR/latent/model_index.json" ]; then  # the folder even if the evaluation failed
    tar -C "$OUTDIR" -cf "$OUTDIR/latent-demo.tar" latent && rm -rf "$OUTDIR/latent"
fi
echo "total: $(( $(date +%s) - start )) s, exit $rc"
ls -la "$OUTDIR"
exit "$rc"
