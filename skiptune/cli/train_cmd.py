"""``skiptune train``: train the bundled demo model, its feature extractor and reference statistics.

The options and the work live with the demo (``skiptune.demo.training.options``), which is also runnable
as ``python -m skiptune.demo.training ...``; nothing here imports Optuna, SQLAlchemy or torch-fidelity at
start-up (GPU machines may lack them), only the step that needs them does.
"""

from __future__ import annotations

import argparse

from skiptune.demo.training.options import DESCRIPTION, HELP, add_arguments, run_from_args

__all__ = ["DESCRIPTION", "HELP", "USES_OPTUNA", "add_arguments", "run"]

USES_OPTUNA = False  # runs where Optuna and SQLAlchemy are not installed (GPU training machines)


def run(args: argparse.Namespace) -> int:
    return run_from_args(args)
