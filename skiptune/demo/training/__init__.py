"""Recipes for the bundled demo assets: the EDM denoiser, the fmnist-classifier and reference stats.

``python -m skiptune.demo.training WHAT ...`` is ``skiptune train WHAT ...`` without the other verbs (so a
GPU machine lacking Optuna/SQLAlchemy/torch-fidelity can still train). Submodules are imported by
their users; nothing heavy is imported here.
"""

from __future__ import annotations
