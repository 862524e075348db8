"""``skiptune eval``: the Fréchet distance of one skip schedule, printed at every rung."""

from __future__ import annotations

import argparse

HELP = "evaluate one (rho_bottom, rho_top) setting: Fréchet distance per sample-count rung"
DESCRIPTION = """\
Sample seeds seed-base .. seed-base + n-samples - 1 with the skip-tuned network and print the Fréchet
distance to the reference statistics at every rung (the numbers a study records for one trial).

examples:
  skiptune eval --model demo --nfe 9 --rho 0.7 1.0 --extractor fmnist-classifier \\
      --reference skiptune/demo/assets/fmnist-train-stats.npz --n-samples 2000 --rungs 500,2000
  skiptune eval --model edm-cifar10-32x32-uncond-vp.pkl --nfe 9 --sampler heun --rho 0.8 1.05 \\
      --sigma-window 0.2 80 --extractor inception-v3-compat --reference cifar10-32x32.npz \\
      --n-samples 10000 --rungs 2000,10000 --batch-size 512 --device cuda --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from skiptune.cli.common import add_json, model_help, reference_help
    from skiptune.cli.stats_cmd import add_extractor_weights
    from skiptune.objectives.features import extractor_choices
    from skiptune.sampling import SAMPLERS

    parser.add_argument(
        "--model", required=True, metavar="M", help=model_help()
    )
    parser.add_argument("--nfe", type=int, required=True, help="network evaluations per sample")
    parser.add_argument(
        "--sampler", default="heun", choices=SAMPLERS.names(), help="sampler (default: %(default)s)"
    )
    parser.add_argument(
        "--rho",
        nargs=2,
        default=["1.0", "1.0"],
        metavar=("BOTTOM", "TOP"),
        help="rho_bottom rho_top (default: 1.0 1.0, the untuned network)",
    )
    parser.add_argument(
        "--sigma-window",
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="apply the coefficients only for LO <= sigma <= HI (default: always)",
    )
    parser.add_argument(
        "--extractor", required=True, metavar="NAME", help=f"one of: {', '.join(extractor_choices())}"
    )
    add_extractor_weights(parser)
    parser.add_argument(
        "--reference", required=True, metavar="PATH", help=reference_help()
    )
    parser.add_argument(
        "--n-samples", type=int, default=10000, help="images to sample (default: %(default)s)"
    )
    parser.add_argument(
        "--rungs", default=None, metavar="N,N", help="sample counts to report at (default: n-samples)"
    )
    parser.add_argument("--seed-base", type=int, default=0, help="first seed (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    from skiptune.cli.common import add_conditioning_options

    add_conditioning_options(parser)
    add_json(parser)


def run(args: argparse.Namespace) -> int:
    from skiptune.cli.common import conditioning_from_args, parse_float_pair, parse_int_list, print_json
    from skiptune.devices import resolve_device
    from skiptune.nets.registry import load_model
    from skiptune.objectives.features import create_extractor
    from skiptune.objectives.fid import FDObjective
    from skiptune.objectives.reference import load_reference
    from skiptune.objectives.spec import ObjectiveSpec
    from skiptune.sampling import bind_conditioning
    from skiptune.skips import SkipSchedule

    bottom, top = parse_float_pair(args.rho, what="--rho")
    window = parse_float_pair(args.sigma_window, what="--sigma-window") if args.sigma_window else None
    schedule = SkipSchedule(rho_bottom=bottom, rho_top=top, sigma_window=window)
    rungs = parse_int_list(args.rungs, what="--rungs") if args.rungs else [args.n_samples]
    device = resolve_device(args.device)
    conditioning = conditioning_from_args(args)
    reference = load_reference(args.reference)  # cheap checks first: files, then the model
    extractor = create_extractor(args.extractor, device=device, weights_path=args.extractor_weights)
    loaded = load_model(args.model, device=device)
    spec = ObjectiveSpec.describe(
        extractor, reference, reference_name=str(args.reference), n_samples=args.n_samples, rungs=rungs,
        seed_base=args.seed_base, conditioning=conditioning,
    )  # fmt: skip
    objective = FDObjective(
        spec=spec,
        denoiser=bind_conditioning(loaded.net, conditioning, device=device),  # type: ignore[arg-type]
        sampler=args.sampler,
        nfe=args.nfe,
        extractor=extractor,
        reference=reference,
        batch_size=args.batch_size,
        device=device,
        progress=not args.no_progress,
    )
    results = []
    for count, distance in objective.evaluate(schedule):
        results.append({"samples": count, "distance": distance})
        if not args.json:
            print(f"{count:>8d} samples  FD {distance:.6g}", flush=True)
    if args.json:
        print_json(
            {
                "model": loaded.name,
                "fingerprint": loaded.fingerprint,
                "schedule": schedule.to_dict(),
                "objective": objective.identity(),
                "results": results,
            }
        )
    return 0
