"""Where the bundled demo assets live (one definition for every layer that names them).

The files are trained by ``skiptune train`` (see ``skiptune/assets/MODEL_CARD.md``) and shipped as
package data, so a fresh machine runs the whole service with nothing to download.
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
DEMO_MODEL_PATH = ASSETS / "fmnist-edm.pt"
DEMO_CLASSIFIER_PATH = ASSETS / "fmnist-classifier.pt"
DEMO_REFERENCE_PATH = ASSETS / "fmnist-train-stats.npz"

# Reference statistics that a study may name instead of a path; the name (not this machine's
# install path) is what the study stores, so workers on other machines resolve it locally.
NAMED_REFERENCES: dict[str, Path] = {"demo": DEMO_REFERENCE_PATH}
