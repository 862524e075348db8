#!/usr/bin/env bash
# Prepare what scripts/gpu_latent_demo.sh needs on the device machine (torch, torchvision, Pillow, numpy,
# scipy and Triton there, nothing else) in one git-ignored folder, CARRY (default .latent-carry), to name
# in the run's carry list; the working tree that travels is capped at 64 MiB, so both parts are xz:
#   site-pyVER.tar.xz   the [diffusers] extra's import chain (diffusers, transformers + kernels,
#                       tokenizers, safetensors, huggingface_hub, ...) at constraints/tested.txt's versions
#                       plus torch-fidelity 0.4.0, unpacked wheels for CPython VER on manylinux x86-64
#                       (about 12 MB instead of 30 MB of wheels)
#   pillow-pyVER.tar.xz Pillow, unpacked there only if the machine has none
#   fashion-mnist/      the four idx files recompressed with xz (26.5 MB instead of 30.9 MB as .gz)
#
#   scripts/latent_carry.sh [CARRY] [PYTHON_VERSION]        (defaults .latent-carry 3.12)
#
# A few minutes on a busy 2-core machine (xz); files already there are kept.
set -euo pipefail
CARRY=${1:-.latent-carry}
PYV=${2:-3.12}
PY=${PYTHON:-python3}
SRC=${FMNIST:-/usr/share/datasets/fashion-mnist}
# What StableDiffusionPipeline.from_pretrained, CLIPTextModel/CLIPTokenizer and torch_fidelity.metric_fid
# import, checked in a bare venv holding only torch, torchvision, Pillow, numpy and scipy (transformers
# 5 needs `kernels` to load a model; its CLI-only needs typer, pydantic and rich, and hf-xet, stay behind).
PACKAGES="diffusers transformers kernels tomlkit tokenizers safetensors huggingface_hub regex PyYAML tqdm
packaging requests urllib3 idna certifi charset-normalizer importlib_metadata zipp httpx2 httpcore2 h11 anyio
truststore click"
pins=("torch-fidelity==0.4.0")  # the lock leaves torch* out; the version the tests ran with
for name in $PACKAGES; do
    pin=$(grep -i -E "^${name//[-_]/[-_]}==" constraints/tested.txt || true)
    [ -n "$pin" ] || { echo "no pin for $name in constraints/tested.txt" >&2; exit 1; }
    pins+=("$pin")
done
mkdir -p "$CARRY/fashion-mnist"
site="$CARRY/site-py$PYV.tar.xz"
if [ ! -s "$site" ]; then
    build=$(mktemp -d)
    $PY -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version "$PYV" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        --target "$build/site" "${pins[@]}"
    rm -rf "$build/site/bin"
    tar -C "$build/site" -cf - . | xz -9 -T2 > "$site.tmp" && mv "$site.tmp" "$site"
    rm -rf "$build"
fi
# Pillow on its own (diffusers imports it; the device's torchvision brings one): unpacked only where missing.
pil="$CARRY/pillow-py$PYV.tar.xz"
if [ ! -s "$pil" ]; then
    build=$(mktemp -d)
    $PY -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version "$PYV" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --target "$build/site" \
        "$(grep -i '^pillow==' constraints/tested.txt)"
    tar -C "$build/site" -cf - . | xz -9 -T2 > "$pil.tmp" && mv "$pil.tmp" "$pil"
    rm -rf "$build"
fi
for f in "$SRC"/*-ubyte.gz; do
    out="$CARRY/fashion-mnist/$(basename "${f%.gz}").xz"
    [ -s "$out" ] || { zcat "$f" | xz -9 -T2 > "$out.tmp" && mv "$out.tmp" "$out"; }
done
du -sh "$site" "$pil" "$CARRY/fashion-mnist"; du -sh --apparent-size "$CARRY"
