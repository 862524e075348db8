#!/usr/bin/env bash
# Issue 21 on one CUDA GPU: a tiny Stable Diffusion folder (random weights) through the worker's real path
# (fast path: bf16 + channels_last + torch.compile around the UNet; guidance as one call at twice the
# batch; Skip-Tuning hooks on the up blocks), then the CPU parity tests on this machine's torch.
#
#   scripts/gpu_pipelines.sh OUTDIR
#
# Needs diffusers + transformers: wheels in .whl/ (carried) are installed to /tmp/site when present:
#   pip download --no-deps -d .whl diffusers==0.42.1 transformers==5.25.0 tokenizers==0.23.3 \
#       huggingface_hub==2.5.0 safetensors==0.8.0 regex==2026.12.2 hf-xet==1.8.0 httpx2==2.17.0 \
#       httpcore2==2.17.0 typer==0.29.3 shellingham==1.5.4 annotated-doc==0.0.7 kernels==0.19.1 \
#       tomlkit==0.15.3 importlib_metadata==10.2.0 zipp==4.1.2
# Writes OUTDIR/summary.json (timings, trial values per precision, parity test result) and logs.
# About 3 minutes on an H100 (two torch.compile runs of a tiny UNet, 4 trials, the parity tests).
# CPU smoke run: DEVICE=cpu N_SAMPLES=16 RUNGS=8,16 scripts/gpu_pipelines.sh /tmp/out
set -uo pipefail
OUTDIR=${1:?usage: scripts/gpu_pipelines.sh OUTDIR}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
[ "${DEVICE:-cuda}" = cpu ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 - "$OUTDIR" <<'PY' 2>&1 | tee "$OUTDIR/pipeline_run.log"
import contextlib, io, json, os, sys, time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, "tests")
from tiny_pipelines import make_cli_assets  # tiny folder, prompts, 16x16 RGB extractor, reference
from skiptune.cli import main

out = Path(sys.argv[1])
device = os.environ.get("DEVICE", "cuda")
folder, prompts, extractor, reference = make_cli_assets(out / "assets")
summary = {"device": torch.cuda.get_device_name() if device != "cpu" else "cpu", "runs": {}}


def cli(argv):
    buf = io.StringIO()
    t = time.time()
    with contextlib.redirect_stdout(buf):
        code = main(argv)
    if code:
        sys.exit(f"skiptune {' '.join(argv)}: exit {code}\n{buf.getvalue()}")
    return buf.getvalue(), time.time() - t


for precision in ("fp32", "auto"):
    storage = f"sqlite:///{out}/{precision}.db"
    cli(["study", "create", "--model", str(folder), "--prompts", str(prompts), "--guidance", "3",
         "--sampler", "dpmpp_2m", "--nfe", "8", "--extractor", f"torchscript:{extractor}",
         "--reference", str(reference), "--n-samples", os.environ.get("N_SAMPLES", "256"),
         "--rungs", os.environ.get("RUNGS", "64,256"), "--trials", "3",
         "--no-validate", "--storage", storage])
    text, seconds = cli(["worker", "--model", str(folder), "--device", device, "--precision", precision,
                         "--batch-size", "64", "--max-trials", "3", "--storage", storage])
    table, _ = cli(["study", "list", "--storage", storage, "--json"])
    best, _ = cli(["best", "--model", "tiny-sd", "--nfe", "8", "--sampler", "dpmpp_2m", "--storage", storage,
                   "--json"])
    _, sample_s = cli(["sample", "--model", str(folder), "--nfe", "8", "--sampler", "dpmpp_2m", "--tuned",
                       "--seeds", "0-15", "--out", str(out / f"grid_{precision}.png"), "--device", device,
                       "--storage", storage])
    summary["runs"][precision] = {"worker_s": round(seconds, 1), "worker": text.strip(),
                                  "sample_s": round(sample_s, 1), "best": json.loads(best),
                                  "studies": json.loads(table)}
    print(precision, summary["runs"][precision]["worker"], f"{seconds:.1f} s", flush=True)
(out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
PY
status=${PIPESTATUS[0]}
python3 -m pytest -q -p no:warnings -p no:cacheprovider tests/test_pipelines_parity.py tests/test_pipelines_loading.py \
    2>&1 | tail -5 | tee "$OUTDIR/parity_tests.log"
echo "pipeline run: exit $status"
