"""The bundled demo's names and files (one definition for every module that names them).

The files are trained by ``skiptune train`` (see ``skiptune/demo/assets/MODEL_CARD.md``) and shipped as
package data, so a fresh machine runs the whole service with nothing to download. The names are what
the demo registers (``skiptune.demo.register``) and what studies store: a study records the reference's
name, not this machine's install path, so workers on other machines resolve it locally.
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
DEMO_MODEL_PATH = ASSETS / "fmnist-edm.pt"
DEMO_CLASSIFIER_PATH = ASSETS / "fmnist-classifier.pt"
DEMO_REFERENCE_PATH = ASSETS / "fmnist-train-stats.npz"
DEMO_LATENT_PATH = ASSETS / "latent"  # a diffusers StableDiffusionPipeline folder (MODEL_CARD.md)

DEMO_MODEL = "demo"  # --model demo
DEMO_LATENT_MODEL = "demo-latent"  # --model demo-latent: latent, text-conditional (prompts: class names)
DEMO_EXTRACTOR = "fmnist-classifier"  # --extractor fmnist-classifier
DEMO_REFERENCE = "demo"  # --reference demo: the 60k training images' statistics in that space
FMNIST_SOURCE = "fmnist"  # --source fmnist:train / fmnist:test
