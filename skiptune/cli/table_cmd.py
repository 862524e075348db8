"""``skiptune table``: best tuned distance vs the baseline, per sampler and NFE, for one model."""

from __future__ import annotations

import argparse
import sys

from skiptune.cli.common import add_json, add_storage, print_json, storage_url
from skiptune.errors import SkiptuneError
from skiptune.search.query import summary_rows
from skiptune.storage import open_storage

HELP = "table of best vs baseline distance per sampler and NFE for a model"
DESCRIPTION = """One row per study: its status, the headline gain (held-out, +- one standard error, once
validated; "(search)" marks the search's own, optimistically biased gain before that), the recommended
pair and its sigma window ("all": every noise level; a window only where the window stage validated
one that beats the pair on every level), and the search-seed distances of the baseline and of the pair.
Studies with the prompt-alignment guard (--clip-guard) add a "CLIP" column: the held-out change of the
mean CLIP score (points, +- one standard error) of the candidate the gain describes.

examples:
  skiptune table --model demo
  skiptune table --model demo --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name (as given to `study create`)")
    add_storage(parser)
    add_json(parser)


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _gain(row: dict[str, object]) -> str:
    """The headline gain: held-out with its standard error once validated, else marked unvalidated."""
    gain, se = row["improvement"], row["gain_se"]
    if gain is None:
        return "-"
    assert isinstance(gain, float)
    if not row["validated"]:
        return f"{100 * gain:+.1f}% (search)"
    if row["status"] == "no-gain":
        best = row["gain"]
        return (
            f"none (best {100 * best:+.1f}±{100 * se:.1f}%)"
            if isinstance(best, float) and isinstance(se, float)
            else "none"
        )
    return f"{100 * gain:+.1f}±{100 * se:.1f}%" if isinstance(se, float) else f"{100 * gain:+.1f}%"


def _clip(row: dict[str, object]) -> str:
    change, se = row.get("clip_change"), row.get("clip_change_se")
    return f"{change:+.2f}±{se:.2f}" if isinstance(change, float) and isinstance(se, float) else "-"


def _window(row: dict[str, object]) -> str:
    """The answer's sigma window, or "all"; with the full-range gain it beat (held-out)."""
    window = row["sigma_window"]
    if not isinstance(window, list):
        return "-" if row["rho_bottom"] is None else "all"
    full = row.get("full_range")
    beat = f" (all: {100 * full['gain']:+.1f}%)" if isinstance(full, dict) else ""
    return f"[{window[0]:.3g}, {window[1]:.3g}]{beat}"


def run(args: argparse.Namespace) -> int:
    rows = summary_rows(open_storage(storage_url(args), read_only=True), args.model)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        raise SkiptuneError(f"no study for model {args.model!r}; create them with `skiptune study create`")
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Skip-Tuning: {args.model}")
    columns: tuple[str, ...] = (
        "sampler",
        "NFE",
        "status",
        "gain",
        "rho_bottom",
        "rho_top",
        "sigma window",
        "baseline",
        "tuned",
        "trials",
        "study",
    )
    clip = any(r.get("clip_change") is not None for r in rows)
    if clip:
        columns = (*columns[:4], "CLIP", *columns[4:])
    for col in columns:
        table.add_column(col, justify="left" if col in ("sampler", "status", "study") else "right")
    for r in rows:
        table.add_row(
            r["sampler"],
            str(r["nfe"]),
            r["status"],
            _gain(r),
            *([_clip(r)] if clip else []),
            _fmt(r["rho_bottom"], ".3f"),
            _fmt(r["rho_top"], ".3f"),
            _window(r),
            _fmt(r["baseline_value"]),
            _fmt(r["value"]),
            f"{r['n_trials']}/{r['budget']}",
            r["study"],
        )
    # a pipe or CI log is no terminal: give the table room instead of eliding columns
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    return 0
