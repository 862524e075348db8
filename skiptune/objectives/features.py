"""Feature extractors by name: uint8 images ``[N,C,H,W]`` -> float32 features ``[N,D]``.

Factories in :data:`EXTRACTORS` take keyword options ``device`` and ``weights_path``;
:func:`create_extractor` also understands ``torchscript:PATH``. Weights are only ever read from local
files: nothing here downloads (a missing file is a :class:`SkiptuneError` saying where to put it).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from skiptune.errors import SkiptuneError
from skiptune.io import load_weights
from skiptune.plugin_types import FeatureExtractor
from skiptune.plugins import EXTRACTORS

INCEPTION_WEIGHTS_ENV = "SKIPTUNE_INCEPTION_WEIGHTS"
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's converted TF weights
INCEPTION_WEIGHTS_URL = (
    f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_FILE}"
)
DINOV2_REPO_ENV = "SKIPTUNE_DINOV2_REPO"
DINOV2_WEIGHTS_ENV = "SKIPTUNE_DINOV2_WEIGHTS"
DINOV2_WEIGHTS_FILE = "dinov2_vitl14_pretrain.pth"
TORCHSCRIPT_PREFIX = "torchscript:"


# EXTRACTORS lives with the other plugin registries (skiptune.plugins); register_extractors() below
# adds the general-purpose ones, plugins add theirs


class ModuleExtractor:
    """Wraps a module taking uint8 ``[N,C,H,W]``: checks input, repeats greyscale, returns float32."""

    def __init__(
        self,
        module: Callable[[torch.Tensor], Any],
        *,
        name: str,
        feature_dim: int,
        input_channels: int,
        device: torch.device | str,
        input_resolution: int | None = None,
        input_format: str = "uint8",
    ) -> None:
        if input_format not in _INPUT_FORMATS:
            raise SkiptuneError(
                f"extractor {name!r} states input_format {input_format!r}; "
                f"expected one of {sorted(_INPUT_FORMATS)}"
            )
        self.module = module
        self.name = name
        self.feature_dim = feature_dim
        self.input_channels = input_channels
        self.input_resolution = input_resolution
        self.input_format = input_format
        self.device = torch.device(device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"{self.name}: expected uint8 images [N,C,H,W], got {images.dtype} {tuple(images.shape)}"
            )
        x = images.to(self.device, non_blocking=True)
        if x.shape[1] == 1 and self.input_channels == 3:
            x = x.expand(-1, 3, -1, -1)  # greyscale -> RGB, as EDM's fid.py does for 1-channel data
        elif x.shape[1] != self.input_channels:
            raise SkiptuneError(
                f"extractor {self.name!r} takes {self.input_channels}-channel images, "
                f"got {x.shape[1]} channels"
            )
        try:
            with torch.no_grad():
                out = self.module(_INPUT_FORMATS[self.input_format](x.contiguous()))
        except RuntimeError as exc:  # a module made for other image sizes (shape mismatch inside it)
            if "out of memory" in str(exc):
                raise
            raise SkiptuneError(
                f"extractor {self.name!r} failed on images of shape {tuple(images.shape[1:])} "
                f"({str(exc).splitlines()[0][:160]}); give it images of the size it was made for "
                "(check --resolution and the model's image size)"
            ) from None
        if isinstance(out, (tuple, list)):  # torch-fidelity modules return a tuple of requested features
            out = out[0]
        if out.ndim != 2 or out.shape != (images.shape[0], self.feature_dim):
            raise SkiptuneError(
                f"extractor {self.name!r} returned shape {tuple(out.shape)}; expected [{images.shape[0]}, "
                f"{self.feature_dim}]"
            )
        return out.float()


_INPUT_FORMATS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "uint8": lambda x: x,
    "float255": lambda x: x.float(),
    "float01": lambda x: x.float() / 255,
    "float11": lambda x: x.float() / 127.5 - 1,
}


def create_extractor(
    spec: str, *, device: torch.device | str = "cpu", weights_path: str | os.PathLike[str] | None = None
) -> FeatureExtractor:
    """The extractor named ``spec`` (a registered name, or ``torchscript:PATH``) on ``device``."""
    if spec.startswith(TORCHSCRIPT_PREFIX):
        return EXTRACTORS.get("torchscript")(device=device, weights_path=spec[len(TORCHSCRIPT_PREFIX) :])
    return EXTRACTORS.get(spec)(device=device, weights_path=weights_path)


def extractor_name(spec: str) -> str:
    """The ``name`` of ``create_extractor(spec)``: ``spec``, a TorchScript path as ``pathlib`` writes it."""
    if spec.startswith(TORCHSCRIPT_PREFIX):
        return f"{TORCHSCRIPT_PREFIX}{Path(spec[len(TORCHSCRIPT_PREFIX) :])}"
    return spec


def extractor_choices() -> list[str]:
    """Names for ``--extractor`` help texts."""
    return [n for n in EXTRACTORS.names() if n != "torchscript"] + [f"{TORCHSCRIPT_PREFIX}PATH"]


# --------------------------------------------------------------------------------------- factories


def inception_weights_path(weights_path: str | os.PathLike[str] | None = None) -> Path:
    """Where the InceptionV3 weights are read: the argument, ``$SKIPTUNE_INCEPTION_WEIGHTS``, else the
    torch hub cache file torch-fidelity itself would use."""
    if weights_path or os.environ.get(INCEPTION_WEIGHTS_ENV):
        return Path(weights_path or os.environ[INCEPTION_WEIGHTS_ENV])
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def _checked_state_dict(path: Path, *, what: str, hint: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise SkiptuneError(f"{what} weights not found at {str(path)!r}; {hint}")
    state = load_weights(path, what=f"{what} weights")  # a state dict of tensors, never code from the file
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SkiptuneError(f"{str(path)!r} is not a state dict of tensors; expected the {what} weights")
    return state


def _inception(
    *, device: torch.device | str, weights_path: str | os.PathLike[str] | None = None
) -> FeatureExtractor:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = inception_weights_path(weights_path)
    hint = (
        f"download {INCEPTION_WEIGHTS_URL} on a machine with internet access and put it there (the torch hub "
        f"cache), or pass its path with --extractor-weights / ${INCEPTION_WEIGHTS_ENV}"
    )
    _checked_state_dict(path, what=f"InceptionV3 ({INCEPTION_WEIGHTS_FILE})", hint=hint)
    # torch-fidelity reads the file itself (the path is set, so it never downloads); validated above.
    try:
        module = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)
        )
    except RuntimeError as exc:  # load_state_dict: wrong keys/shapes
        raise SkiptuneError(
            f"{str(path)!r} does not hold torch-fidelity's InceptionV3 weights ({exc})"
        ) from None
    return ModuleExtractor(
        module.to(device), name="inception-v3-compat", feature_dim=2048, input_channels=3, device=device
    )


def _dinov2(
    *, device: torch.device | str, weights_path: str | os.PathLike[str] | None = None
) -> FeatureExtractor:
    # torch-fidelity's constructor calls torch.hub.load("facebookresearch/dinov2"), which contacts GitHub even
    # with a cached copy; so the hub code is loaded from its local folder and the weights from a local file,
    # and torch-fidelity's module (its preprocessing and forward) is assembled around that network.
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.feature_extractor_dinov2 import FeatureExtractorDinoV2

    hub = Path(torch.hub.get_dir())
    repo = Path(os.environ.get(DINOV2_REPO_ENV) or hub / "facebookresearch_dinov2_main")
    weights = Path(
        weights_path or os.environ.get(DINOV2_WEIGHTS_ENV) or hub / "checkpoints" / DINOV2_WEIGHTS_FILE
    )
    if not (repo / "hubconf.py").is_file():
        raise SkiptuneError(
            f"DINOv2 code not found at {str(repo)!r}; clone https://github.com/facebookresearch/dinov2 there "
            f"(the torch hub cache) or set ${DINOV2_REPO_ENV}"
        )
    hint = (
        f"download https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/{DINOV2_WEIGHTS_FILE} there, "
        "or pass its "
        f"path with --extractor-weights / ${DINOV2_WEIGHTS_ENV}"
    )
    state = _checked_state_dict(weights, what=f"DINOv2 ViT-L/14 ({DINOV2_WEIGHTS_FILE})", hint=hint)
    os.environ["XFORMERS_DISABLED"] = "1"  # as torch-fidelity does: plain attention, the same numbers
    net = torch.hub.load(str(repo), "dinov2_vitl14", source="local", pretrained=False, trust_repo=True)
    net.load_state_dict(state)
    module = FeatureExtractorDinoV2.__new__(FeatureExtractorDinoV2)
    FeatureExtractorBase.__init__(module, "dinov2-vit-l-14", ["dinov2"])
    module.feature_extractor_internal_dtype = torch.float32
    module.model = net
    module.requires_grad_(False).eval()
    return ModuleExtractor(
        module.to(device), name="dinov2-vit-l-14", feature_dim=1024, input_channels=3, device=device
    )


def _torchscript(
    *, device: torch.device | str, weights_path: str | os.PathLike[str] | None = None
) -> FeatureExtractor:
    """A TorchScript module file. Optional module attributes: ``feature_dim``, ``input_channels`` (default 3),
    ``input_resolution`` (default: any), ``input_format`` ('uint8' default, 'float255', 'float01',
    'float11')."""
    if not weights_path:
        raise SkiptuneError("the torchscript extractor needs a file: use --extractor torchscript:PATH")
    path = Path(weights_path)
    if not path.is_file():
        raise SkiptuneError(f"TorchScript extractor file {str(path)!r} not found")
    try:
        with warnings.catch_warnings():  # deprecated in torch >= 2.10, still the format users have
            warnings.filterwarnings(
                "ignore", message="`torch.jit.load` is deprecated", category=FutureWarning
            )
            module = torch.jit.load(str(path), map_location=device)
    except Exception as exc:
        raise SkiptuneError(f"cannot load {str(path)!r} as a TorchScript module ({exc})") from None
    module.eval()
    channels = int(getattr(module, "input_channels", 3))
    resolution = getattr(module, "input_resolution", None)
    extractor = ModuleExtractor(
        module,
        name=f"{TORCHSCRIPT_PREFIX}{path}",
        feature_dim=0,
        input_channels=channels,
        device=device,
        input_resolution=int(resolution) if resolution is not None else None,
        input_format=str(getattr(module, "input_format", "uint8")),
    )
    extractor.feature_dim = _feature_dim(module, extractor)
    return extractor


def _feature_dim(module: Any, extractor: ModuleExtractor) -> int:
    if hasattr(module, "feature_dim"):
        return int(module.feature_dim)
    side = extractor.input_resolution or 32  # probe once with two random images
    probe = torch.randint(0, 256, (2, extractor.input_channels, side, side), dtype=torch.uint8)
    try:
        with torch.no_grad():
            out = module(_INPUT_FORMATS[extractor.input_format](probe.to(extractor.device)))
    except RuntimeError as exc:
        raise SkiptuneError(
            f"extractor {extractor.name!r} failed on a probe batch of {side}x{side} images ({exc}); give the "
            "module integer attributes feature_dim and input_resolution"
        ) from None
    if isinstance(out, (tuple, list)):
        out = out[0]
    if out.ndim != 2 or out.shape[0] != 2:
        raise SkiptuneError(
            f"extractor {extractor.name!r} maps [2,C,H,W] to {tuple(out.shape)}; expected [2, D]"
        )
    return int(out.shape[1])


def register_extractors() -> None:
    """The general-purpose extractors: a built-in plugin, loaded by ``skiptune.plugins`` with the others."""
    EXTRACTORS.register("inception-v3-compat", _inception)
    EXTRACTORS.register("dinov2-vit-l-14", _dinov2)
    EXTRACTORS.register("torchscript", _torchscript)
