"""``skiptune stats``: reference statistics (mu, sigma) of real images in an extractor's feature space."""

from __future__ import annotations

import argparse

HELP = "compute reference statistics of real images for a feature extractor"
DESCRIPTION = """\
Compute reference statistics (feature mean and covariance, float64) of a set of real images and write
them as .npz with their metadata (extractor, resolution, count, source, sha256). Results are cached by
content under $SKIPTUNE_CACHE (default ~/.cache/skiptune), so repeating a command is instant.

sources: fmnist:train, fmnist:test (Fashion-MNIST from $SKIPTUNE_FMNIST_ROOT or
/usr/share/datasets/fashion-mnist), a folder of PNG/JPEG images, a .npz with a uint8 'images'
array (NHWC or NCHW), or an idx images file (.gz). --resolution pads smaller images with black.

examples:
  skiptune stats --source fmnist:train --extractor fmnist-classifier --out fmnist-train.npz --resolution 32
  skiptune stats --source cifar10-train/ --extractor inception-v3-compat --out cifar10-32.npz --device cuda
  skiptune stats --source images.npz --extractor torchscript:my_extractor.pt --out ref.npz --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from skiptune.cli.common import add_json, source_help
    from skiptune.objectives.features import extractor_choices

    parser.add_argument(
        "--source", required=True, metavar="SRC", help=source_help()
    )
    parser.add_argument(
        "--extractor", required=True, metavar="NAME", help=f"one of: {', '.join(extractor_choices())}"
    )
    parser.add_argument("--out", required=True, metavar="PATH", help="statistics file to write (.npz)")
    parser.add_argument(
        "--resolution", type=int, default=None, help="pad images to this size (default: as read)"
    )
    add_extractor_weights(parser)
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--no-cache", action="store_true", help="recompute even when cached statistics exist")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json(parser)


def add_extractor_weights(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--extractor-weights",
        default=None,
        metavar="PATH",
        help="local weights file of the extractor (default for Inception: $SKIPTUNE_INCEPTION_WEIGHTS, "
        "then the torch hub cache)",
    )


def run(args: argparse.Namespace) -> int:
    from skiptune.cli.common import print_json
    from skiptune.devices import resolve_device
    from skiptune.errors import SkiptuneError
    from skiptune.io import check_output_path
    from skiptune.objectives.data import open_source
    from skiptune.objectives.features import create_extractor
    from skiptune.objectives.reference import compute_reference, save_reference

    if args.batch_size < 1 or (args.resolution is not None and args.resolution < 1):
        raise SkiptuneError(
            f"--batch-size {args.batch_size} and --resolution {args.resolution} must be positive"
        )
    check_output_path(args.out, what="reference statistics (--out)", suffixes=(".npz",))
    device = resolve_device(args.device)
    extractor = create_extractor(args.extractor, device=device, weights_path=args.extractor_weights)
    source = open_source(args.source, resolution=args.resolution)
    reference = compute_reference(
        source,
        extractor,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        use_cache=not args.no_cache,
    )
    save_reference(reference, args.out)
    info = {"out": args.out, **reference.metadata()}
    if args.json:
        print_json(info)
    else:
        print(
            f"wrote {args.out}: {reference.count} images of {source.description}, {reference.resolution}px, "
            f"{extractor.name} ({reference.feature_dim} features), sha256 {reference.sha256[:16]}"
        )
    return 0
