"""How much does the batch size change sample i and the Fréchet distance? Against the distance's seed noise.

    python benchmarks/batch_invariance.py --n 480 --nfe 9 --device cpu            # the README's numbers
    python benchmarks/batch_invariance.py --n 5000 --nfe 9 --device cuda --precision bf16

Samples seeds 0..n-1 of the bundled demo model (Heun, untuned) at batch size 1, at batch size
``--batch`` and as a split across two "workers" (seeds 0..n/2-1 and n/2..n-1 at another batch size),
then reports: pixels that differ from the batch-1 images (count, largest difference in uint8 levels),
the distance of each run to the demo reference (fmnist-classifier features), and the seed noise of that
distance: |FD(seeds 0..n-1) - FD(seeds n..2n-1)|, two disjoint blocks of the same size at batch ``--batch``.
With ``--precision bf16`` the second run uses skiptune's fast path in bf16 instead (GPU).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(REPO))

from skiptune.nets.registry import load_model  # noqa: E402
from skiptune.objectives.features import create_extractor  # noqa: E402
from skiptune.objectives.frechet import FeatureStats, frechet_distance  # noqa: E402
from skiptune.objectives.reference import load_reference  # noqa: E402
from skiptune.sampling import generate_images  # noqa: E402


def images(net: torch.nn.Module, seeds: range, *, batch: int, nfe: int, device: str) -> torch.Tensor:
    out = generate_images(net, sampler="heun", nfe=nfe, seeds=seeds, batch_size=batch, device=device)
    return torch.cat([b.cpu() for b in out])


def distance(extractor, reference, imgs: torch.Tensor) -> float:  # type: ignore[no-untyped-def]
    stats = FeatureStats(extractor.feature_dim)
    for start in range(0, len(imgs), 250):
        stats.update(extractor(imgs[start : start + 250]))
    return frechet_distance(stats.mean(), stats.cov(), reference.mu, reference.sigma)


def pixel_diff(a: torch.Tensor, b: torch.Tensor) -> dict[str, int]:
    diff = (a.int() - b.int()).abs()
    return {"pixels_differing": int((diff > 0).sum()), "max_levels": int(diff.max())}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=480, help="samples per block")
    parser.add_argument("--nfe", type=int, default=9)
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    net = load_model("demo", device=args.device).net
    extractor = create_extractor("fmnist-classifier", device=args.device)
    reference = load_reference("demo")
    seeds = range(args.n)
    one = images(net, seeds, batch=1, nfe=args.nfe, device=args.device)
    other = net
    if args.precision == "bf16":
        from skiptune.nets.fast import FastPath, prepare_with

        other = prepare_with(net, FastPath(precision="bf16"))
    big = images(other, seeds, batch=args.batch, nfe=args.nfe, device=args.device)
    half = args.n // 2
    split = torch.cat(
        [
            images(net, range(0, half), batch=max(1, args.batch // 3), nfe=args.nfe, device=args.device),
            images(net, range(half, args.n), batch=args.batch + 5, nfe=args.nfe, device=args.device),
        ]
    )
    block2 = images(other, range(args.n, 2 * args.n), batch=args.batch, nfe=args.nfe, device=args.device)
    fd = {
        "batch_1": distance(extractor, reference, one),
        f"batch_{args.batch}" + ("_bf16" if args.precision == "bf16" else ""): distance(
            extractor, reference, big
        ),
        "split": distance(extractor, reference, split),
        "second_block": distance(extractor, reference, block2),
    }
    values = list(fd.values())
    result = {
        "n": args.n,
        "nfe": args.nfe,
        "device": args.device,
        "pixels": {
            f"batch_1_vs_{args.batch}": pixel_diff(one, big),
            "batch_1_vs_split": pixel_diff(one, split),
            "values_per_block": one.numel(),
        },
        "fd": fd,
        "delta_fd_batch": abs(values[1] - values[0]),
        "delta_fd_split": abs(values[2] - values[0]),
        "seed_noise": abs(values[3] - values[1]),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
