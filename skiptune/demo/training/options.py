"""The front end of ``skiptune train`` (and ``python -m skiptune.demo.training``): options -> typed commands.

The only place argparse meets the trainers: ``add_arguments`` defines the options, ``to_command`` turns
parsed options into one of the command dataclasses of :mod:`skiptune.demo.training.commands`, and
``run_from_args`` runs it, printing progress and the JSON log. Nothing here imports Optuna, SQLAlchemy or
torch-fidelity (a GPU machine may lack them); only the step that needs one does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skiptune.errors import SkiptuneError

if TYPE_CHECKING:
    from skiptune.demo.training.commands import TrainCommand

HELP = "train the demo diffusion model, the demo classifier or reference statistics"
DESCRIPTION = """\
Train the bundled demo assets on Fashion-MNIST (padded to 32x32).

examples:
  skiptune train classifier --out skiptune/demo/assets/fmnist-classifier.pt --epochs 15
  skiptune train diffusion --out skiptune/demo/assets/fmnist-edm.pt --max-seconds 450 --batch-size 512
  skiptune train reference-stats --out skiptune/demo/assets/fmnist-train-stats.npz
  skiptune train evaluate --model skiptune/demo/assets/fmnist-edm.pt --nfe 35 --samples 10000
  python -m skiptune.demo.training diffusion --steps 20 --batch-size 8 --out /tmp/smoke.pt   # CPU smoke run

--data is the folder holding the four Fashion-MNIST *-ubyte.gz files (default: $SKIPTUNE_FMNIST_ROOT,
else /usr/share/datasets/fashion-mnist).
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, metavar="DIR", help="Fashion-MNIST folder (default: see above)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--log-json", default=None, metavar="PATH", help="also write the run's log as JSON here")


def _add_diffusion(d: argparse.ArgumentParser) -> None:
    _common(d)
    d.add_argument("--out", required=True, metavar="PATH", help="checkpoint to write (.pt, fp16 EMA weights)")
    d.add_argument("--steps", type=int, default=200_000, help="optimizer steps (upper bound)")
    d.add_argument("--max-seconds", type=float, default=None, help="stop after this much training time")
    d.add_argument("--batch-size", type=int, default=256)
    d.add_argument("--lr", type=float, default=1e-3)
    d.add_argument("--lr-warmup-images", type=int, default=200_000)
    d.add_argument("--ema-halflife-images", type=int, default=500_000)
    d.add_argument("--model-channels", type=int, default=32)
    d.add_argument("--channel-mult", default="1,2,2", help="per-resolution channel multipliers")
    d.add_argument("--num-blocks", type=int, default=1)
    d.add_argument("--attn-resolutions", default="", help="resolutions with self-attention, e.g. 8")
    d.add_argument("--dropout", type=float, default=0.1)
    d.add_argument("--no-xflip", action="store_true", help="disable random horizontal flips")
    d.add_argument("--log-every", type=int, default=200)
    d.add_argument("--checkpoint-every-seconds", type=float, default=120.0)
    d.add_argument(
        "--init", default=None, metavar="PATH", help="continue from these weights (e.g. an EMA .pt)"
    )
    d.add_argument("--resume-images", type=int, default=0, help="images --init has seen (EMA ramp-up)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from skiptune.sampling import SAMPLERS

    sub = parser.add_subparsers(dest="what", metavar="WHAT", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter
    _add_diffusion(sub.add_parser("diffusion", help="the demo EDM denoiser (SongUNet)", formatter_class=fmt))

    c = sub.add_parser("classifier", help="the fmnist-classifier feature extractor", formatter_class=fmt)
    _common(c)
    c.add_argument("--out", required=True, metavar="PATH", help="weights to write (.pt)")
    c.add_argument("--epochs", type=float, default=15.0)
    c.add_argument("--batch-size", type=int, default=256)
    c.add_argument("--lr", type=float, default=3e-3)
    c.add_argument("--width", type=int, default=32)

    r = sub.add_parser(
        "reference-stats", help="Fréchet statistics of a split in the classifier space", formatter_class=fmt
    )
    _common(r)
    r.add_argument("--out", required=True, metavar="PATH", help="reference statistics to write (.npz)")
    r.add_argument("--classifier", default=None, metavar="PATH", help="classifier weights (default: bundled)")
    r.add_argument("--split", default="train", choices=["train", "test"])
    r.add_argument("--batch-size", type=int, default=1000)

    e = sub.add_parser(
        "evaluate",
        help="classifier accuracy, FD floor and a model's FD at one NFE (JSON)",
        formatter_class=fmt,
    )
    _common(e)
    e.add_argument("--model", default=None, metavar="PATH", help="denoiser checkpoint (omit: no sampling)")
    e.add_argument(
        "--reference", default=None, metavar="PATH", help="training reference stats (default: bundled)"
    )
    e.add_argument("--classifier", default=None, metavar="PATH", help="classifier weights (default: bundled)")
    e.add_argument("--sampler", default="heun", choices=SAMPLERS.names())
    e.add_argument("--nfe", type=int, default=35)
    e.add_argument("--samples", type=int, default=10_000)
    e.add_argument("--batch-size", type=int, default=500)


def _int_tuple(text: str, *, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise SkiptuneError(f"bad {what} {text!r}: expected comma-separated integers like 1,2,2") from None


def _path(text: str | None) -> Path | None:
    return Path(text) if text else None


def to_command(args: argparse.Namespace) -> TrainCommand:
    """The typed command the parsed options describe."""
    from skiptune.demo.training import commands
    from skiptune.demo.training.classifier import ClassifierTrainConfig
    from skiptune.demo.training.diffusion import DiffusionTrainConfig, UNetConfig

    where = commands.Where(data=args.data, device=args.device)
    if args.what == "diffusion":
        unet = UNetConfig(
            model_channels=args.model_channels,
            channel_mult=_int_tuple(args.channel_mult, what="--channel-mult"),
            num_blocks=args.num_blocks,
            attn_resolutions=_int_tuple(args.attn_resolutions, what="--attn-resolutions"),
            dropout=args.dropout,
        )
        config = DiffusionTrainConfig(
            unet=unet, steps=args.steps, max_seconds=args.max_seconds, batch_size=args.batch_size,
            lr=args.lr, lr_warmup_images=args.lr_warmup_images, ema_halflife_images=args.ema_halflife_images,
            xflip=not args.no_xflip, seed=args.seed, log_every=args.log_every,
            checkpoint_every_seconds=args.checkpoint_every_seconds, resume_images=args.resume_images,
        )  # fmt: skip
        return commands.DiffusionCommand(
            out=Path(args.out), config=config, init=_path(args.init), where=where
        )
    if args.what == "classifier":
        classifier = ClassifierTrainConfig(
            width=args.width, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed
        )
        return commands.ClassifierCommand(out=Path(args.out), config=classifier, where=where)
    if args.what == "reference-stats":
        return commands.ReferenceStatsCommand(
            out=Path(args.out), classifier=_path(args.classifier), split=args.split,
            batch_size=args.batch_size, where=where,
        )  # fmt: skip
    if args.what == "evaluate":
        return commands.EvaluateCommand(
            model=_path(args.model), reference=_path(args.reference), classifier=_path(args.classifier),
            sampler=args.sampler, nfe=args.nfe, samples=args.samples, batch_size=args.batch_size,
            seed=args.seed, where=where,
        )  # fmt: skip
    raise SkiptuneError(
        f"unknown training target {args.what!r}; expected one of: diffusion, classifier, reference-stats, "
        "evaluate"
    )


def _printer(prefix: str):  # type: ignore[no-untyped-def]
    def emit(entry: dict[str, Any]) -> None:
        print(
            f"[{prefix}] "
            + " ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()),
            flush=True,
        )

    return emit


def run_from_args(args: argparse.Namespace) -> int:
    """Run the command the options describe; print progress lines, then the log (without losses)."""
    from skiptune.demo.training.commands import run_command

    log = run_command(to_command(args), _printer(args.what))
    if args.log_json:
        Path(args.log_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.log_json).write_text(json.dumps(log, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in log.items() if k != "losses"}, indent=2, default=str))
    return 0
