#!/usr/bin/env bash
# Prepare what scripts/gpu_latent_demo.sh needs on the device machine (torch, torchvision, Pillow, numpy,
# scipy and Triton there, nothing else): the wheels of the [diffusers] extra's import chain at the
# versions of constraints/tested.txt (plus torch-fidelity 0.4.0), and Fashion-MNIST's four idx files
# recompressed with xz (30.9 MB as .gz, about 26.5 MB as .xz: the working tree that travels is capped at
# 64 MiB). Both folders are git-ignored here; name them in the run's carry list.
#
#   scripts/latent_carry.sh [WHEELS_DIR] [DATA_DIR] [PYTHON_VERSION]     (defaults .whl .data-xz 3.12)
#
# The xz step takes a few minutes on a busy 2-core machine; it is skipped for files already there.
set -euo pipefail
WHL=${1:-.whl}
XZ=${2:-.data-xz}
PYV=${3:-3.12}
PY=${PYTHON:-python3}
SRC=${FMNIST:-/usr/share/datasets/fashion-mnist}
# What `import diffusers, transformers` + StableDiffusionPipeline, CLIPTextModel/CLIPTokenizer and
# torch_fidelity.metric_fid import (checked in a bare venv holding only torch, torchvision, Pillow, numpy
# and scipy); transformers' CLI-only needs (typer, pydantic, kernels, rich) and hf-xet stay behind.
PACKAGES="diffusers transformers tokenizers safetensors huggingface_hub regex PyYAML tqdm packaging requests
urllib3 idna certifi charset-normalizer importlib_metadata zipp httpx2 httpcore2 h11 anyio truststore click"
pins=("torch-fidelity==0.4.0")  # the lock leaves torch* out; the version the tests ran with
for name in $PACKAGES; do
    pin=$(grep -i -E "^${name//[-_]/[-_]}==" constraints/tested.txt || true)
    [ -n "$pin" ] || { echo "no pin for $name in constraints/tested.txt" >&2; exit 1; }
    pins+=("$pin")
done
mkdir -p "$WHL" "$XZ"
$PY -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHL" "${pins[@]}"
for f in "$SRC"/*-ubyte.gz; do
    out="$XZ/$(basename "${f%.gz}").xz"
    [ -s "$out" ] || { zcat "$f" | xz -9 -T2 > "$out.tmp" && mv "$out.tmp" "$out"; }
done
du -sh "$WHL" "$XZ"
