"""``skiptune report``: PNG plots of a model's studies."""

from __future__ import annotations

import argparse

from skiptune.cli.common import add_storage, storage_url
from skiptune.storage import open_storage

HELP = "write PNG plots (distance vs NFE, trials per study) for a model"
DESCRIPTION = """Writes distance_vs_nfe.png (baseline vs tuned per sampler) and, per study,
trials_<sampler>_nfe<N>_<hash>.png (every trial in the (rho_bottom, rho_top) plane).

examples:
  skiptune report --model demo --out report/
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name (as given to `study create`)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (created)")
    add_storage(parser)


def run(args: argparse.Namespace) -> int:
    from skiptune.report import write_report

    for path in write_report(open_storage(storage_url(args), read_only=True), args.model, args.out):
        print(path)
    return 0
