"""The ``skiptune`` command: one verb per task, and only the verb that runs is imported.

Each verb lives in its own module ``skiptune/cli/<verb>_cmd.py`` exposing

    HELP: str                                    one line (the same as its summary in VERBS below)
    def add_arguments(parser) -> None            its options (kebab-case, defaults shown)
    def run(args) -> int                         the work; returns the exit code
    USES_OPTUNA: bool = True                     False: nothing it runs imports Optuna

``skiptune --help`` lists VERBS without importing any of them, and ``skiptune VERB ...`` imports only
that verb's module, so ``skiptune train`` runs on a machine without Optuna or SQLAlchemy.
A :class:`~skiptune.errors.SkiptuneError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NamedTuple

from skiptune.errors import SkiptuneError


class Verb(NamedTuple):
    module: str  # under skiptune.cli (names avoid clashing with Python keywords/builtins)
    summary: str  # the verb module's HELP, here so that the index imports no verb


VERBS: dict[str, Verb] = {
    "study": Verb("study_cmd", "create studies (one per NFE) or list them"),
    "worker": Verb("worker_cmd", "run a worker (one process per GPU with --devices) on a model's studies"),
    "validate": Verb(
        "validate_cmd", "validate a study's best pairs on held-out seeds (jobs for the workers)"
    ),
    "best": Verb("best_cmd", "print the best skip coefficients found for a model x sampler x NFE"),
    "table": Verb("table_cmd", "table of best vs baseline distance per sampler and NFE for a model"),
    "sample": Verb("sample_cmd", "generate images with untuned, given or tuned skip coefficients"),
    "report": Verb("report_cmd", "write PNG plots (distance vs NFE, trials per study) for a model"),
    "eval": Verb(
        "eval_cmd", "evaluate one (rho_bottom, rho_top) setting: Fréchet distance per sample-count rung"
    ),
    "analyze": Verb(
        "analyze_cmd", "pixel and feature losses per sigma of tuned pairs vs (1, 1); suggests a sigma window"
    ),
    "stats": Verb("stats_cmd", "compute reference statistics of real images for a feature extractor"),
    "train": Verb(
        "train_cmd", "train the demo diffusion model, the demo classifier or reference statistics"
    ),
    "demo": Verb(
        "demo_cmd", "run the whole service on the bundled demo model (SQLite, local workers, CPU)"
    ),
    "proxy": Verb(
        "proxy_cmd", "run Optuna's gRPC storage proxy in front of a database (needs the `grpc` extra)"
    ),
}


def _present(verb: str) -> bool:
    """Whether the verb's module exists (found without importing it)."""
    return importlib.util.find_spec(f"skiptune.cli.{VERBS[verb].module}") is not None


def verb_module(verb: str) -> ModuleType:
    return importlib.import_module(f"skiptune.cli.{VERBS[verb].module}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, the options of that verb alone are defined (and only it imported)."""
    parser = argparse.ArgumentParser(
        prog="skiptune",
        description="Search Skip-Tuning coefficients (rho_bottom, rho_top) of diffusion UNets.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, (_, summary) in VERBS.items():
        if not _present(verb):
            continue
        p = sub.add_parser(verb, help=summary, formatter_class=argparse.RawDescriptionHelpFormatter)
        if only is None or verb == only:
            module = verb_module(verb)
            p.description = getattr(module, "DESCRIPTION", getattr(module, "HELP", summary))
            module.add_arguments(p)  # type: ignore[attr-defined]
            uses_optuna = getattr(module, "USES_OPTUNA", True)
            p.set_defaults(_run=module.run, _uses_optuna=uses_optuna)  # type: ignore[attr-defined]
    return parser


def _quiet_optuna() -> None:
    """Optuna logs every study creation at INFO; the verbs print what matters themselves."""
    try:
        import optuna
    except ImportError:  # the verb that needs it says so when it imports it
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = argv[0] if argv and argv[0] in VERBS else ""  # "": --help or a bad verb, imports none
    args = build_parser(chosen).parse_args(argv)
    if args._uses_optuna:
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
