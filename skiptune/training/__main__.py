"""``python -m skiptune.training WHAT ...``: the ``skiptune train`` verb on its own."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from skiptune.cli import train_cmd
from skiptune.errors import SkiptuneError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m skiptune.training",
        description=train_cmd.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train_cmd.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return train_cmd.run(args)
    except SkiptuneError as exc:
        print(f"skiptune train: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
