"""The demo feature extractor: a small Fashion-MNIST classifier whose penultimate layer embeds images.

No pretrained Inception weights can be fetched on a fresh machine, so the demo measures a Fréchet
distance in the feature space of this classifier instead ("Fréchet distance in the fmnist-classifier
feature space", never called FID). It is trained by ``skiptune train classifier`` and shipped as
``skiptune/demo/assets/fmnist-classifier.pt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from skiptune.demo.bundled import DEMO_CLASSIFIER_PATH, DEMO_EXTRACTOR
from skiptune.errors import SkiptuneError
from skiptune.io import load_weights

EXTRACTOR_NAME = DEMO_EXTRACTOR
CHECKPOINT_FORMAT = "skiptune-classifier"
INPUT_RESOLUTION = 32

# Fashion-MNIST pixel mean/std (of the 28x28 training images, in [0, 1]); normalising inside the
# module means every caller feeds raw uint8 and nobody can forget or double the normalisation.
_PIXEL_MEAN = 0.2860
_PIXEL_STD = 0.3530


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class FashionClassifier(nn.Module):
    """A VGG-style CNN for 32x32 greyscale uint8 images (Fashion-MNIST padded by 2 px).

    ``features(x)`` is the global-average-pooled last conv stage (``4 * width`` dims, after ReLU, as
    Inception's pool3 is for FID); ``forward(x)`` returns the 10 class logits.
    """

    def __init__(self, *, width: int = 32, num_classes: int = 10, dropout: float = 0.3) -> None:
        super().__init__()
        self.width = width
        self.num_classes = num_classes
        self.feature_dim = 4 * width
        self.trunk = nn.Sequential(
            _conv_bn(1, width),
            _conv_bn(width, width),
            nn.MaxPool2d(2),  # 16x16
            _conv_bn(width, 2 * width),
            _conv_bn(2 * width, 2 * width),
            nn.MaxPool2d(2),  # 8x8
            _conv_bn(2 * width, 4 * width),
            _conv_bn(4 * width, 4 * width),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.feature_dim, num_classes))

    def config(self) -> dict[str, Any]:
        return {"width": self.width, "num_classes": self.num_classes}

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise SkiptuneError(
                f"FashionClassifier expects uint8 images, got {x.dtype}; quantise to 0..255 first"
            )
        return (x.float() / 255.0 - _PIXEL_MEAN) / _PIXEL_STD

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.normalise(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def save_classifier(
    model: FashionClassifier, path: str | Path, *, metadata: dict[str, Any] | None = None
) -> None:
    """Write ``{"format", "config", "state_dict", "metadata"}`` (float32, loadable with weights_only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": model.config(),
        "state_dict": state,
        "metadata": dict(metadata or {}),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # atomic: a reader never sees half a file


def load_classifier(path: str | Path, *, device: str | torch.device = "cpu") -> FashionClassifier:
    path = Path(path)
    if not path.is_file():
        raise SkiptuneError(
            f"classifier weights {str(path)!r} not found; train them with "
            "`skiptune train classifier --data DIR --out PATH` (or reinstall skiptune for the bundled ones)"
        )
    payload = load_weights(path, what="classifier weights")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise SkiptuneError(
            f"{str(path)!r} is not a skiptune classifier checkpoint (format {CHECKPOINT_FORMAT!r})"
        )
    try:
        model = FashionClassifier(**payload["config"])
        model.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, TypeError, RuntimeError) as exc:
        raise SkiptuneError(
            f"{str(path)!r} is a damaged classifier checkpoint ({str(exc).splitlines()[0][:160]}); "
            "train it again with `skiptune train classifier` (or reinstall skiptune for the bundled one)"
        ) from None
    return model.to(device).eval().requires_grad_(False)


class ClassifierExtractor:
    """``FeatureExtractor``: uint8 ``[N,C,H,W]`` -> float32 ``[N, feature_dim]`` in the classifier's space.

    Accepts 32x32 or 28x28 (zero-padded by 2 px, as in training) and 1 or 3 channels (3 are averaged,
    the inverse of repeating greyscale to RGB).
    """

    name = EXTRACTOR_NAME
    input_channels = 1
    input_resolution = INPUT_RESOLUTION

    def __init__(self, model: FashionClassifier, *, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.feature_dim = model.feature_dim

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise SkiptuneError(
                f"{self.name} expects uint8 images [N,C,H,W], got {images.dtype} {tuple(images.shape)}"
            )
        _, c, h, w = images.shape
        if c == 3:
            images = images.float().mean(dim=1, keepdim=True).round().to(torch.uint8)
        elif c != 1:
            raise SkiptuneError(f"{self.name} takes 1 or 3 channels, got {c}")
        if (h, w) == (28, 28):
            images = nn.functional.pad(images, (2, 2, 2, 2))
        elif (h, w) != (INPUT_RESOLUTION, INPUT_RESOLUTION):
            raise SkiptuneError(f"{self.name} takes 32x32 or 28x28 images, got {h}x{w}")
        return images

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = self._prepare(images).to(self.device)
        return self.model.features(x).float()


def load_demo_extractor(
    device: str | torch.device = "cpu", *, path: str | Path | None = None
) -> ClassifierExtractor:
    """The bundled ``fmnist-classifier`` extractor (``skiptune/demo/assets/fmnist-classifier.pt``)."""
    return ClassifierExtractor(load_classifier(path or DEMO_CLASSIFIER_PATH, device=device), device=device)
