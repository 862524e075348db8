"""Image data for reference statistics: image sources and the idx reader.

An :class:`ImageSource` yields uint8 ``[n, C, H, W]`` batches and states a content fingerprint, so
reference statistics can be cached by *what the images are*, not by where they were read from.
Sources: a registered ``PREFIX:ARG`` (``skiptune.plugins.IMAGE_SOURCES``), a folder of PNG/JPEG images,
a ``.npz`` holding a uint8 ``images`` (or ``arr_0``) array in NHWC or NCHW layout, and an idx (``.gz``)
image file.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from skiptune.errors import SkiptuneError
from skiptune.io import load_npz
from skiptune.plugin_types import ImageSource
from skiptune.plugins import IMAGE_SOURCES

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_IDX_UBYTE = 0x08


# --------------------------------------------------------------------------------------------- idx


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an idx file (gzip-compressed when the name ends in ``.gz``) of unsigned bytes."""
    path = Path(path)
    if not path.is_file():
        raise SkiptuneError(f"idx file {str(path)!r} does not exist")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise SkiptuneError(
            f"cannot read idx file {str(path)!r} ({exc}); re-download or reinstall it"
        ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE or raw[3] == 0:
        raise SkiptuneError(
            f"{str(path)!r} is not an idx file of unsigned bytes: its magic number is "
            f"{raw[:4].hex() or 'empty'} "
            "(expected 000008 followed by the number of dimensions, e.g. 00000803 for images)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise SkiptuneError(f"idx file {str(path)!r} is truncated inside its header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) if shape else 0
    if len(raw) - header != expected:
        raise SkiptuneError(
            f"idx file {str(path)!r} holds {len(raw) - header} data bytes but its header {shape} needs "
            f"{expected}; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def pad_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """Centre ``[N,C,H,W]`` images on a black (zero) ``size`` x ``size`` canvas (28 -> 32: 2 px a side)."""
    h, w = images.shape[-2:]
    if h > size or w > size or (size - h) % 2 or (size - w) % 2:
        raise SkiptuneError(
            f"cannot pad {h}x{w} images to {size}x{size}: padding must be non-negative and even "
            "(the same on both sides)"
        )
    ph, pw = (size - h) // 2, (size - w) // 2
    return torch.nn.functional.pad(images, (pw, pw, ph, ph), value=0)


# ------------------------------------------------------------------------------------------ sources


class TensorSource:
    """Images already in memory (Fashion-MNIST, ``.npz``, idx): uint8 ``[N,C,H,W]``."""

    def __init__(self, images: torch.Tensor, *, description: str) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise SkiptuneError(
                f"{description}: expected uint8 images [N,C,H,W], got {images.dtype} {tuple(images.shape)}"
            )
        if images.shape[0] < 2:  # a covariance needs two images
            raise SkiptuneError(
                f"{description}: holds {images.shape[0]} images; statistics need at least 2 (thousands "
                "for a useful reference): pass a source with images"
            )
        self.images = images.contiguous()
        self.description = description
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for start in range(0, len(self), batch_size):
            yield self.images[start : start + batch_size]

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256(repr(tuple(self.images.shape)).encode())
            h.update(self.images.numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint


class FolderSource:
    """PNG/JPEG files found recursively under a folder, in sorted relative-path order."""

    def __init__(self, folder: Path, *, resolution: int | None = None) -> None:
        self.folder = folder
        self.files = sorted(
            p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not self.files:
            raise SkiptuneError(f"no PNG/JPEG images found under {str(folder)!r}")
        self.resolution = resolution
        self.description = f"folder {folder} ({len(self.files)} images)"

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, path: Path) -> np.ndarray:
        from PIL import Image

        try:  # UnidentifiedImageError (not an image, truncated) is an OSError
            with Image.open(path) as img:
                arr = np.asarray(img.convert("L" if img.mode in ("L", "1", "I;16", "I") else "RGB"))
        except OSError as exc:
            raise SkiptuneError(
                f"cannot read image {str(path)!r} ({str(exc).splitlines()[0][:120]}); remove or replace "
                "the file, then run the command again"
            ) from None
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        first_shape: tuple[int, ...] | None = None
        for start in range(0, len(self.files), batch_size):
            arrays = [self._read(p) for p in self.files[start : start + batch_size]]
            for p, a in zip(self.files[start : start + batch_size], arrays):
                first_shape = first_shape or a.shape
                if a.shape != first_shape:
                    raise SkiptuneError(
                        f"image {str(p)!r} has shape {a.shape} (C,H,W) but earlier images have "
                        f"{first_shape}; "
                        "all images of a source must share size and channel count"
                    )
            batch = torch.from_numpy(np.stack(arrays))
            yield pad_to(batch, self.resolution) if self.resolution else batch

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"folder;pad={self.resolution}".encode())
        for p in self.files:
            h.update(str(p.relative_to(self.folder)).encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
        return h.hexdigest()


def _npz_images(path: Path) -> torch.Tensor:
    arrays = load_npz(path, what="images")
    key = next((k for k in ("images", "arr_0") if k in arrays), None)
    if key is None:
        raise SkiptuneError(
            f"{str(path)!r} has arrays {sorted(arrays)}; expected a uint8 array named 'images' or 'arr_0'"
        )
    arr = arrays[key]
    if arr.dtype != np.uint8 or arr.ndim != 4:
        raise SkiptuneError(
            f"{str(path)!r}: expected uint8 images [N,H,W,C] or [N,C,H,W], got {arr.dtype} {arr.shape}"
        )
    if arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    return torch.from_numpy(np.ascontiguousarray(arr))


def fit_resolution(images: torch.Tensor, resolution: int | None) -> torch.Tensor:
    """``images`` centred on a black ``resolution`` canvas when smaller (as read when ``None``)."""
    return pad_to(images, resolution) if resolution and images.shape[-1] != resolution else images


def source_usages() -> list[str]:
    """The source forms ``open_source`` takes, registered ones first (for ``--help`` and errors)."""
    return [IMAGE_SOURCES.get(p).usage for p in IMAGE_SOURCES.names()] + ["FOLDER", "FILE.npz", "IDX"]


def open_source(spec: str, *, resolution: int | None = None) -> ImageSource:
    """An image source from a registered ``PREFIX:ARG``, a folder, a ``.npz`` or an idx file.

    With ``resolution``, smaller images are centred on a black canvas of that size (28 -> 32).
    """
    prefix = re.match(r"([^:/\\]{2,}):", spec)
    if prefix and prefix.group(1) in IMAGE_SOURCES:
        return IMAGE_SOURCES.get(prefix.group(1)).open(spec[prefix.end() :], resolution=resolution)
    path = Path(spec)
    if path.is_dir():
        return FolderSource(path, resolution=resolution)
    if not path.is_file():
        registered = ", ".join(IMAGE_SOURCES.get(p).usage for p in IMAGE_SOURCES.names())
        raise SkiptuneError(
            f"image source {spec!r} not found; expected a registered source ({registered or 'none'}), "
            "a folder of PNG/JPEG images, a .npz with a uint8 'images' array, or an idx images file"
        )
    if path.suffix == ".npz":
        return TensorSource(fit_resolution(_npz_images(path), resolution), description=f"npz {path}")
    arr = read_idx(path)
    if arr.ndim != 3:
        raise SkiptuneError(f"idx file {spec!r} has shape {arr.shape}; expected images [N,H,W]")
    images = torch.from_numpy(arr.copy()).unsqueeze(1)
    return TensorSource(fit_resolution(images, resolution), description=f"idx {path}")
