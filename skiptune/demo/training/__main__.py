"""``python -m skiptune.demo.training WHAT ...``: ``skiptune train`` without the rest of the CLI."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from skiptune.demo.training import options
from skiptune.errors import SkiptuneError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m skiptune.demo.training",
        description=options.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    options.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return options.run_from_args(args)
    except SkiptuneError as exc:
        print(f"skiptune train: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
