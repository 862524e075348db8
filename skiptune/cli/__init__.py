"""The ``skiptune`` command: one verb per task.

Each verb lives in its own module ``skiptune/cli/<verb>.py`` exposing

    HELP: str                                    one line for ``skiptune --help``
    def add_arguments(parser) -> None            its options (kebab-case, defaults shown)
    def run(args) -> int                         the work; returns the exit code

A :class:`~skiptune.errors.SkiptuneError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from skiptune.errors import SkiptuneError

# verb -> module under skiptune.cli (module names avoid clashing with Python keywords/builtins)
VERBS: dict[str, str] = {
    "study": "study_cmd",
    "worker": "worker_cmd",
    "validate": "validate_cmd",
    "best": "best_cmd",
    "table": "table_cmd",
    "sample": "sample_cmd",
    "report": "report_cmd",
    "eval": "eval_cmd",
    "analyze": "analyze_cmd",
    "stats": "stats_cmd",
    "train": "train_cmd",
    "demo": "demo_cmd",
    "proxy": "proxy_cmd",
}


def _available_verbs() -> dict[str, object]:
    modules: dict[str, object] = {}
    for verb, module in VERBS.items():
        try:
            modules[verb] = importlib.import_module(f"skiptune.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"skiptune.cli.{module}":
                raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skiptune",
        description="Search Skip-Tuning coefficients (rho_bottom, rho_top) of diffusion UNets.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, module in _available_verbs().items():
        p = sub.add_parser(
            verb,
            help=getattr(module, "HELP", ""),
            description=getattr(module, "DESCRIPTION", getattr(module, "HELP", "")),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)  # type: ignore[attr-defined]
        p.set_defaults(_run=module.run)  # type: ignore[attr-defined]
    return parser


def _quiet_optuna() -> None:
    """Optuna logs every study creation at INFO; the verbs print what matters themselves."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_optuna()
    try:
        return int(args._run(args) or 0)
    except SkiptuneError as exc:
        print(f"skiptune {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"skiptune {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
