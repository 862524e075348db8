"""``skiptune table``: best tuned distance vs the baseline, per sampler and NFE, for one model."""

from __future__ import annotations

import argparse
import sys

from skiptune.cli.common import add_json, add_storage, print_json, storage_url
from skiptune.errors import SkiptuneError
from skiptune.search.query import summary_rows
from skiptune.storage import open_storage

HELP = "table of best vs baseline distance per sampler and NFE for a model"
DESCRIPTION = """examples:
  skiptune table --model demo
  skiptune table --model demo --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name (as given to `study create`)")
    add_storage(parser)
    add_json(parser)


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def run(args: argparse.Namespace) -> int:
    rows = summary_rows(open_storage(storage_url(args)), args.model)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        raise SkiptuneError(f"no study for model {args.model!r}; create them with `skiptune study create`")
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Skip-Tuning: {args.model}")
    for col in ("sampler", "NFE", "baseline", "tuned", "gain", "rho_bottom", "rho_top", "trials", "study"):
        table.add_column(col, justify="left" if col in ("sampler", "study") else "right")
    for r in rows:
        gain = None if r["improvement"] is None else 100 * r["improvement"]
        table.add_row(
            r["sampler"],
            str(r["nfe"]),
            _fmt(r["baseline_value"]),
            _fmt(r["value"]),
            "-" if gain is None else f"{gain:+.1f}%",
            _fmt(r["rho_bottom"], ".3f"),
            _fmt(r["rho_top"], ".3f"),
            f"{r['n_trials']}/{r['budget']}",
            r["study"],
        )
    # a pipe or CI log is no terminal: give the table room instead of eliding columns
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    return 0
