"""The bundled Fashion-MNIST demo, a plugin like any other: it registers itself into the registries.

    register()          models ``demo`` and ``demo-latent`` (a diffusers pipeline folder), extractor
                        ``fmnist-classifier``, reference ``demo`` and the image source
                        ``fmnist:train|fmnist:test`` (see ``skiptune.plugins``)
    bundled.py          the names above and the shipped files (assets/: weights, statistics, model card)
    data.py             Fashion-MNIST idx files -> uint8 tensors
    classifier.py       the fmnist-classifier (a small CNN whose pooled features embed images)
    training/           recipes that made the assets (``skiptune train``,
                        ``python -m skiptune.demo.training``; ``training/latent/``: ``demo-latent``)

Outside ``skiptune.demo`` and ``skiptune.cli`` nothing names the demo; ``register`` only records names
and factories (their modules are imported when first used), so loading it costs nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from skiptune.demo.bundled import (
    DEMO_CLASSIFIER_PATH,
    DEMO_EXTRACTOR,
    DEMO_LATENT_MODEL,
    DEMO_LATENT_PATH,
    DEMO_MODEL,
    DEMO_MODEL_PATH,
    DEMO_REFERENCE,
    DEMO_REFERENCE_PATH,
    FMNIST_SOURCE,
)
from skiptune.errors import SkiptuneError

if TYPE_CHECKING:
    import torch

    from skiptune.demo.classifier import ClassifierExtractor
    from skiptune.objectives.data import ImageSource


def register() -> None:
    """The demo's entry point in the ``skiptune.plugins`` group."""
    from skiptune import plugins

    plugins.MODELS.register(DEMO_MODEL, _demo_model)  # a getter whose error says how to get the file
    plugins.MODELS.register(DEMO_LATENT_MODEL, _demo_latent_model)
    plugins.register_extractor(DEMO_EXTRACTOR, _fmnist_classifier)
    plugins.register_reference(DEMO_REFERENCE, DEMO_REFERENCE_PATH)
    plugins.register_image_source(FMNIST_SOURCE, _open_fmnist, usage="fmnist:train|fmnist:test")


def _demo_model() -> Path:
    if not DEMO_MODEL_PATH.exists():
        raise SkiptuneError(
            f"model {DEMO_MODEL!r} is registered at {DEMO_MODEL_PATH}, which does not exist; train it "
            f"(`skiptune train diffusion --out {DEMO_MODEL_PATH}`), reinstall skiptune or pass a "
            "checkpoint path"
        )
    return DEMO_MODEL_PATH


def _demo_latent_model() -> Path:
    """The shipped latent demo pipeline folder; one line saying how to make it where it is absent."""
    folder = DEMO_LATENT_PATH
    if not (folder / "model_index.json").is_file():
        raise SkiptuneError(
            f"model {DEMO_LATENT_MODEL!r} is registered at {folder}, which holds no diffusers pipeline "
            "(no model_index.json); train it (`scripts/gpu_latent_demo.sh OUTDIR`, then unpack "
            f"OUTDIR/latent-demo.tar into {folder}), reinstall skiptune or pass a pipeline folder path"
        )
    return folder


def _fmnist_classifier(
    *, device: torch.device | str, weights_path: str | os.PathLike[str] | None = None
) -> ClassifierExtractor:
    """The demo's Fashion-MNIST classifier (bundled weights unless ``weights_path``)."""
    from skiptune.demo.classifier import load_demo_extractor

    return load_demo_extractor(device, path=Path(weights_path) if weights_path else DEMO_CLASSIFIER_PATH)


def _open_fmnist(argument: str, *, resolution: int | None) -> ImageSource:
    """``fmnist:train`` / ``fmnist:test`` from ``$SKIPTUNE_FMNIST_ROOT`` or the Debian location."""
    from skiptune.demo.data import load_fashion_mnist
    from skiptune.objectives.data import TensorSource, fit_resolution

    images, _ = load_fashion_mnist(argument)
    return TensorSource(fit_resolution(images, resolution), description=f"Fashion-MNIST {argument}")
