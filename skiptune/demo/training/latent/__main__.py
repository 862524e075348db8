"""``python -m skiptune.demo.training.latent --out DIR``: train the latent demo and measure it.

VAE first, then the UNet and text encoder on its latents, then the pipeline folder is written, loaded
back with ``StableDiffusionPipeline.from_pretrained`` and evaluated (``evaluate.py``) at each
``--eval`` setting; the whole log is one JSON file. ``--smoke`` shrinks everything for a CPU check.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from skiptune.errors import SkiptuneError

EXAMPLES = """\
examples:
  python -m skiptune.demo.training.latent --out /tmp/latent --vae-seconds 60 --denoiser-seconds 250
  python -m skiptune.demo.training.latent --out /tmp/latent-smoke --smoke --device cpu   # a minute on a CPU
"""


def parse_settings(text: str) -> list[Any]:
    """``ddim:50:3,dpmpp_2m:10:3`` -> SampleSettings (scheduler:steps:guidance)."""
    from skiptune.demo.training.latent.evaluate import SCHEDULERS, SampleSetting

    settings = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        parts = item.split(":")
        try:
            name, steps, guidance = parts[0], int(parts[1]), float(parts[2])
        except (IndexError, ValueError):
            raise SkiptuneError(
                f"bad --eval item {item!r}; expected SCHEDULER:STEPS:GUIDANCE like ddim:50:3"
            ) from None
        if name not in SCHEDULERS or steps < 1 or guidance < 1:
            raise SkiptuneError(
                f"bad --eval item {item!r}; the scheduler is one of {', '.join(SCHEDULERS)}, steps >= 1, "
                "guidance >= 1"
            )
        settings.append(SampleSetting(scheduler=name, steps=steps, guidance=guidance))
    return settings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m skiptune.demo.training.latent", description=__doc__, epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--out", required=True, metavar="DIR", help="pipeline folder to write")
    p.add_argument("--log-json", default=None, metavar="PATH", help="also write the log as JSON here")
    p.add_argument(
        "--stats", default=None, metavar="PATH", help="also write the samples' feature statistics (.npz)"
    )
    p.add_argument(
        "--data", default=None, metavar="DIR", help="Fashion-MNIST folder (default: as skiptune train)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-seconds", type=float, default=60.0, help="VAE training time (default: %(default)s)")
    p.add_argument("--vae-batch-size", type=int, default=256)
    p.add_argument("--denoiser-seconds", type=float, default=250.0, help="UNet + text encoder training time")
    p.add_argument("--batch-size", type=int, default=512, help="denoiser batch (default: %(default)s)")
    p.add_argument("--lr", type=float, default=5e-4, help="denoiser AdamW learning rate")
    p.add_argument("--eval", default="ddim:50:3,dpmpp_2m:10:3", help="SCHEDULER:STEPS:GUIDANCE list")
    p.add_argument("--eval-samples", type=int, default=10_000, help="samples per --eval setting")
    p.add_argument("--eval-batch-size", type=int, default=1000)
    p.add_argument(
        "--classifier", default=None, metavar="PATH", help="fmnist-classifier weights (default: bundled)"
    )
    p.add_argument(
        "--reference", default=None, metavar="PATH", help="reference statistics (default: bundled demo)"
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny networks, 512 images, a few steps, 20 samples: checks the whole path on a CPU",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        log = run(args)
    except SkiptuneError as exc:
        print(f"latent demo: error: {exc}", file=sys.stderr)
        return 2
    if args.log_json:
        Path(args.log_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.log_json).write_text(json.dumps(log, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in log.items() if k not in ("vae", "denoiser")}, indent=2, default=str))
    return 0


def _emit(prefix: str):  # type: ignore[no-untyped-def]
    def emit(entry: dict[str, Any]) -> None:
        text = " ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items())
        print(f"[{prefix}] {text}", flush=True)

    return emit


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train, save, reload and evaluate; the JSON-able log."""
    from skiptune.demo.training.latent.recipe import LatentRecipe, run_recipe

    settings = parse_settings(args.eval)
    recipe = LatentRecipe.from_args(args, settings=settings)
    start = time.perf_counter()
    log = run_recipe(recipe, emit=_emit)
    log["total_seconds"] = round(time.perf_counter() - start, 1)
    return log


if __name__ == "__main__":
    sys.exit(main())
