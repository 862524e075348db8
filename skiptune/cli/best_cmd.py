"""``skiptune best``: the best (rho_bottom, rho_top) found for a model, sampler and NFE."""

from __future__ import annotations

import argparse

from skiptune.cli.common import add_json, add_storage, print_json, storage_url
from skiptune.sampling import SAMPLERS
from skiptune.search.query import best_coefficients
from skiptune.storage import open_storage

HELP = "print the best skip coefficients found for a model x sampler x NFE"
DESCRIPTION = """Print the best (rho_bottom, rho_top) of a study, its distance, the untuned baseline's
distance, the samples behind the value and the trials run.

examples:
  skiptune best --model demo --nfe 9
  skiptune best --model edm-cifar10 --nfe 19 --sampler heun --json --storage postgresql://db/skiptune
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name (as given to `study create`)")
    parser.add_argument("--nfe", required=True, type=int, help="number of function evaluations")
    parser.add_argument(
        "--sampler", default="heun", choices=SAMPLERS.names(), help="sampler (default: %(default)s)"
    )
    parser.add_argument("--study", default=None, metavar="NAME", help="study name, when several match")
    add_storage(parser)
    add_json(parser)


def run(args: argparse.Namespace) -> int:
    best = best_coefficients(
        open_storage(storage_url(args)), args.model, args.nfe, args.sampler, study_name=args.study
    )
    if args.json:
        print_json(best.to_dict())
        return 0
    print(f"study          {best.study_name}")
    print(f"rho_bottom     {best.rho_bottom:.4f}")
    print(f"rho_top        {best.rho_top:.4f}")
    if best.sigma_window is not None:
        print(f"sigma window   [{best.sigma_window[0]:.4g}, {best.sigma_window[1]:.4g}]")
    print(f"distance       {best.value:.4f}  ({best.n_samples} samples)")
    if best.baseline_value is None:
        print("baseline       (not measured yet)")
    else:
        gain = 100 * (best.baseline_value - best.value) / best.baseline_value if best.baseline_value else 0.0
        print(f"baseline (1,1) {best.baseline_value:.4f}  ({gain:+.1f}% better tuned)")
    print(f"trials         {best.n_trials}")
    return 0
