"""Feature extractors: torch-fidelity's InceptionV3 from a local weights file, TorchScript files, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from skiptune.errors import SkiptuneError
from skiptune.objectives import features
from skiptune.objectives.features import (
    EXTRACTORS,
    INCEPTION_WEIGHTS_FILE,
    FeatureExtractor,
    create_extractor,
)

# torch.jit.script/save are deprecated in recent torch, but TorchScript files remain a supported user format.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")


class _RandomInception(FeatureExtractorInceptionV3):
    """torch-fidelity's InceptionV3 that keeps its random initialisation instead of loading weights."""

    def load_state_dict(self, state_dict, strict=True, assign=False):  # type: ignore[override]
        return None


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory: pytest.TempPathFactory) -> tuple[FeatureExtractorInceptionV3, Path]:
    folder = tmp_path_factory.mktemp("inception")
    torch.save({}, folder / "empty.pth")
    torch.manual_seed(0)
    net = _RandomInception(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(folder / "empty.pth")
    )
    path = folder / INCEPTION_WEIGHTS_FILE
    torch.save(net.state_dict(), path)
    return net, path


@pytest.fixture
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("attempted a download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", refuse)


def test_inception_from_weights_file_matches_torch_fidelity(random_inception, no_downloads) -> None:
    net, path = random_inception
    extractor = create_extractor("inception-v3-compat", weights_path=path)
    assert isinstance(extractor, FeatureExtractor)
    assert (extractor.name, extractor.feature_dim, extractor.input_channels) == (
        "inception-v3-compat",
        2048,
        3,
    )
    images = torch.randint(
        0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    got = extractor(images)
    (want,) = net(images)
    assert got.dtype == torch.float32 and got.shape == (2, 2048)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert got.std() > 0
    grey = images[:, :1]  # greyscale is repeated to 3 channels
    torch.testing.assert_close(extractor(grey), net(grey.repeat(1, 3, 1, 1))[0], rtol=1e-5, atol=1e-6)


def test_inception_found_in_torch_hub_cache(random_inception, no_downloads, monkeypatch, tmp_path) -> None:
    _, path = random_inception
    monkeypatch.delenv(features.INCEPTION_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE).symlink_to(path)
    assert features.inception_weights_path() == tmp_path / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE
    assert create_extractor("inception-v3-compat").feature_dim == 2048


def test_missing_inception_weights_names_file_and_place(no_downloads, monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(features.INCEPTION_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(SkiptuneError) as info:
        create_extractor("inception-v3-compat")
    message = str(info.value)
    assert INCEPTION_WEIGHTS_FILE in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    monkeypatch.setenv(features.INCEPTION_WEIGHTS_ENV, str(tmp_path / "elsewhere.pth"))
    with pytest.raises(SkiptuneError, match=r"elsewhere\.pth"):
        create_extractor("inception-v3-compat")


def test_corrupt_inception_weights(no_downloads, tmp_path) -> None:
    bad = tmp_path / INCEPTION_WEIGHTS_FILE
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SkiptuneError, match="cannot read"):
        create_extractor("inception-v3-compat", weights_path=bad)
    torch.save({"fc.weight": torch.randn(3, 3)}, bad)
    with pytest.raises(SkiptuneError, match="does not hold"):
        create_extractor("inception-v3-compat", weights_path=bad)


def test_missing_dinov2_is_a_clear_error(no_downloads, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(features.DINOV2_REPO_ENV, raising=False)
    with pytest.raises(SkiptuneError, match="DINOv2 code not found"):
        create_extractor("dinov2-vit-l-14")


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


class _TinyDeclared(_Tiny):
    def __init__(self) -> None:
        super().__init__()
        self.feature_dim = 6
        self.input_channels = 1
        self.input_format = "float01"


def test_torchscript_extractor_with_declared_attributes(tmp_path) -> None:
    torch.manual_seed(2)
    module = _TinyDeclared().eval()
    torch.jit.save(torch.jit.script(module), str(tmp_path / "tiny.pt"))
    extractor = create_extractor(f"torchscript:{tmp_path / 'tiny.pt'}")
    assert (extractor.feature_dim, extractor.input_channels) == (6, 1)
    images = torch.randint(0, 256, (5, 1, 12, 12), dtype=torch.uint8)
    with torch.no_grad():
        want = module(images.float() / 255)
    torch.testing.assert_close(extractor(images), want)
    with pytest.raises(SkiptuneError, match="3 channels"):
        extractor(torch.zeros(1, 3, 12, 12, dtype=torch.uint8))


def test_torchscript_extractor_probes_feature_dim(tmp_path) -> None:
    class ToFloat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = _Tiny()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x.float().mean(1, keepdim=True) / 255)

    torch.manual_seed(3)
    module = ToFloat().eval()
    torch.jit.save(torch.jit.script(module), str(tmp_path / "t.pt"))
    extractor = create_extractor(f"torchscript:{tmp_path / 't.pt'}")
    assert (extractor.feature_dim, extractor.input_channels) == (6, 3)
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    torch.testing.assert_close(extractor(images), module(images).detach())


def test_torchscript_errors(tmp_path) -> None:
    with pytest.raises(SkiptuneError, match="not found"):
        create_extractor(f"torchscript:{tmp_path / 'nope.pt'}")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(SkiptuneError, match="TorchScript"):
        create_extractor(f"torchscript:{tmp_path / 'junk.pt'}")


def test_registry_names() -> None:
    assert {"inception-v3-compat", "dinov2-vit-l-14", "fmnist-classifier"} <= set(EXTRACTORS.names())
    with pytest.raises(SkiptuneError, match="unknown feature extractor 'nope'"):
        create_extractor("nope")
    assert "torchscript:PATH" in features.extractor_choices()


_FAKE_HUBCONF = '''
import torch


class _Fake(torch.nn.Module):
    """Stands in for DINOv2 ViT-L/14: [N,3,224,224] float -> [N,1024]."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3 * 4 * 4, 1024)

    def forward(self, x):
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


def dinov2_vitl14(pretrained=True):
    assert not pretrained, "skiptune must load the weights itself"
    return _Fake()
'''


def test_dinov2_from_local_hub_folder(no_downloads, monkeypatch, tmp_path) -> None:
    """The real loading path with a stand-in network: local hub code, local weights, torch-fidelity's
    preprocessing (TF-style resize to 224, ImageNet normalisation)."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(features.DINOV2_REPO_ENV, raising=False)
    monkeypatch.delenv(features.DINOV2_WEIGHTS_ENV, raising=False)
    repo = tmp_path / "hub" / "facebookresearch_dinov2_main"
    repo.mkdir(parents=True)
    (repo / "hubconf.py").write_text(_FAKE_HUBCONF)
    with pytest.raises(SkiptuneError, match=r"dinov2_vitl14_pretrain\.pth"):
        create_extractor("dinov2-vit-l-14")
    proj = nn.Linear(48, 1024)
    (tmp_path / "hub" / "checkpoints").mkdir()
    torch.save(
        {f"proj.{k}": v for k, v in proj.state_dict().items()},
        tmp_path / "hub" / "checkpoints" / features.DINOV2_WEIGHTS_FILE,
    )
    extractor = create_extractor("dinov2-vit-l-14")
    assert (extractor.name, extractor.feature_dim) == ("dinov2-vit-l-14", 1024)
    images = torch.randint(0, 256, (3, 1, 20, 20), dtype=torch.uint8)
    x = interpolate_bilinear_2d_like_tensorflow1x(
        images.repeat(1, 3, 1, 1).float(), size=(224, 224), align_corners=False
    )
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    with torch.no_grad():
        want = proj(torch.nn.functional.adaptive_avg_pool2d((x - mean) / std, 4).flatten(1))
    torch.testing.assert_close(extractor(images), want, rtol=1e-4, atol=1e-5)
