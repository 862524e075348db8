"""The fmnist-classifier feature extractor: shipped accuracy, input handling, determinism, round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from skiptune.demo.classifier import (
    ClassifierExtractor,
    FashionClassifier,
    load_classifier,
    load_demo_extractor,
    save_classifier,
)
from skiptune.demo.data import fmnist_root
from skiptune.errors import SkiptuneError


def _dataset_present() -> bool:
    root = fmnist_root()
    return (root / "t10k-images-idx3-ubyte.gz").is_file() and (root / "t10k-labels-idx1-ubyte.gz").is_file()


def _random_extractor(width: int = 8) -> ClassifierExtractor:
    torch.manual_seed(0)
    model = FashionClassifier(width=width)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode is not the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return ClassifierExtractor(model.eval())


def _images(n: int, *, c: int = 1, size: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=g)


@pytest.mark.skipif(
    not _dataset_present(), reason="Fashion-MNIST test files absent (apt install dataset-fashion-mnist)"
)
def test_shipped_classifier_reaches_92_percent_on_the_test_set() -> None:
    from skiptune.demo.training.classifier import accuracy
    from skiptune.demo.training.data import load_padded

    images, labels = load_padded("test")
    extractor = load_demo_extractor("cpu")
    assert extractor.name == "fmnist-classifier" and extractor.feature_dim == 128
    assert accuracy(extractor.model, images, labels) >= 0.92


def test_shipped_reference_stats_match_the_shipped_extractor() -> None:
    from skiptune.demo.bundled import DEMO_REFERENCE_PATH
    from skiptune.objectives.reference import load_reference

    ref = load_reference(DEMO_REFERENCE_PATH)
    extractor = load_demo_extractor("cpu")
    assert (ref.extractor, ref.feature_dim, ref.resolution, ref.count) == (extractor.name, 128, 32, 60_000)


def test_extractor_output_shape_dtype_and_input_forms() -> None:
    extractor = _random_extractor()
    x28 = _images(5, size=28)
    feats = extractor(x28)
    assert feats.shape == (5, extractor.feature_dim) and feats.dtype == torch.float32
    torch.testing.assert_close(feats, extractor(nn.functional.pad(x28, (2, 2, 2, 2))), rtol=0, atol=0)
    rgb = x28.expand(-1, 3, -1, -1)  # greyscale repeated to RGB averages back to itself
    torch.testing.assert_close(extractor(rgb), feats, rtol=0, atol=0)
    with pytest.raises(SkiptuneError, match="uint8"):
        extractor(x28.float())
    with pytest.raises(SkiptuneError, match="32x32 or 28x28"):
        extractor(_images(2, size=16))


def test_extractor_is_deterministic_and_batch_independent() -> None:
    extractor = _random_extractor()
    x = _images(12, seed=3)
    a, b = extractor(x), extractor(x)
    assert torch.equal(a, b)
    chunks = torch.cat([extractor(x[:5]), extractor(x[5:])])
    torch.testing.assert_close(chunks, a, rtol=1e-5, atol=1e-5)


def test_features_feed_the_logits() -> None:
    extractor = _random_extractor()
    model = extractor.model
    x = _images(4, seed=4)
    torch.testing.assert_close(model(x), model.head[1](model.features(x)))


def test_save_load_round_trip_and_missing_file(tmp_path) -> None:
    extractor = _random_extractor()
    path = tmp_path / "cls.pt"
    save_classifier(extractor.model, path, metadata={"test_accuracy": 0.5})
    loaded = load_classifier(path)
    x = _images(3, seed=5)
    torch.testing.assert_close(loaded(x), extractor.model(x), rtol=0, atol=0)
    with pytest.raises(SkiptuneError, match="skiptune train classifier"):
        load_demo_extractor("cpu", path=tmp_path / "missing.pt")
    torch.save({"format": "other"}, tmp_path / "bad.pt")
    with pytest.raises(SkiptuneError, match="not a skiptune classifier"):
        load_classifier(tmp_path / "bad.pt")


def test_classifier_trainer_learns_a_separable_toy_task() -> None:
    from skiptune.demo.training.classifier import ClassifierTrainConfig, accuracy, train_classifier

    g = torch.Generator().manual_seed(6)
    labels = torch.randint(0, 2, (128,), generator=g)
    # class 1 is brighter: the trainer's flips and shifts keep that cue intact
    images = torch.randint(0, 40, (128, 1, 32, 32), dtype=torch.uint8, generator=g)
    images[labels == 1] += 150
    config = ClassifierTrainConfig(width=4, epochs=6, batch_size=32, lr=1e-2, seed=0)
    result = train_classifier(images, labels, config=config, device=torch.device("cpu"))
    assert accuracy(result.model, images, labels) > 0.95
