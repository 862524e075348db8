"""Fashion-MNIST idx loading (tiny files written here, the real data when installed) and image sources."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from skiptune.demo.data import DEFAULT_FMNIST_ROOT, load_fashion_mnist
from skiptune.errors import SkiptuneError
from skiptune.objectives.data import open_source, pad_to, read_idx


def _write_idx(path: Path, array: np.ndarray, *, magic: bytes | None = None, cut: int = 0) -> None:
    header = magic if magic is not None else bytes([0, 0, 8, array.ndim])
    body = header + b"".join(struct.pack(">I", n) for n in array.shape) + array.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") as f:
        f.write(body[: len(body) - cut])


def _tiny_fmnist(root: Path, n: int = 5, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    _write_idx(root / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(root / "t10k-labels-idx1-ubyte.gz", labels)
    return images, labels


def test_load_tiny_idx_files(tmp_path: Path) -> None:
    images, labels = _tiny_fmnist(tmp_path)
    x, y = load_fashion_mnist("test", root=tmp_path)
    assert x.dtype == torch.uint8 and x.shape == (5, 1, 28, 28)
    assert y.dtype == torch.int64
    np.testing.assert_array_equal(x[:, 0].numpy(), images)
    np.testing.assert_array_equal(y.numpy(), labels)


def test_root_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, _ = _tiny_fmnist(tmp_path, n=3, seed=1)
    monkeypatch.setenv("SKIPTUNE_FMNIST_ROOT", str(tmp_path))
    np.testing.assert_array_equal(load_fashion_mnist("test")[0][:, 0].numpy(), images)


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(SkiptuneError, match="dataset-fashion-mnist"):
        load_fashion_mnist("test", root=tmp_path)
    with pytest.raises(SkiptuneError, match="unknown Fashion-MNIST split 'val'"):
        load_fashion_mnist("val", root=tmp_path)
    arr = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    _write_idx(tmp_path / "truncated.gz", arr, cut=10)
    with pytest.raises(SkiptuneError, match="truncated or corrupt"):
        read_idx(tmp_path / "truncated.gz")
    _write_idx(tmp_path / "magic.gz", arr, magic=bytes([0, 0, 0x0D, 3]))  # float idx, not ubyte
    with pytest.raises(SkiptuneError, match="magic number is 00000d03"):
        read_idx(tmp_path / "magic.gz")
    (tmp_path / "notgzip.gz").write_bytes(b"\x00\x00\x08\x03 definitely not gzip")
    with pytest.raises(SkiptuneError, match="cannot read idx file"):
        read_idx(tmp_path / "notgzip.gz")
    _tiny_fmnist(tmp_path, n=4)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(SkiptuneError, match="4 images but 3 labels"):
        load_fashion_mnist("test", root=tmp_path)


def test_pad_to_centres_on_black() -> None:
    x = torch.randint(1, 256, (2, 1, 28, 28), dtype=torch.uint8)
    y = pad_to(x, 32)
    assert y.shape == (2, 1, 32, 32)
    assert torch.equal(y[:, :, 2:30, 2:30], x)
    mask = torch.ones(32, 32, dtype=torch.bool)
    mask[2:30, 2:30] = False
    assert (y[:, :, mask] == 0).all()
    with pytest.raises(SkiptuneError, match="cannot pad"):
        pad_to(x, 31)


def test_sources_npz_folder_idx(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    nhwc = rng.integers(0, 256, (7, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=nhwc)
    np.savez(tmp_path / "b.npz", nhwc.transpose(0, 3, 1, 2))  # arr_0, NCHW
    a, b = open_source(str(tmp_path / "a.npz")), open_source(str(tmp_path / "b.npz"))
    batches = list(a.batches(3))
    assert [t.shape[0] for t in batches] == [3, 3, 1] and len(a) == 7
    assert torch.equal(torch.cat(batches), torch.from_numpy(nhwc).permute(0, 3, 1, 2))
    assert a.fingerprint() == b.fingerprint()  # same pixels, same content hash

    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        Image.fromarray(nhwc[i]).save(folder / ("sub" if i % 2 else ".") / f"{i:02d}.png")
    src = open_source(str(folder))
    got = torch.cat(list(src.batches(2)))
    want = torch.from_numpy(nhwc[[0, 2, 4, 1, 3]]).permute(0, 3, 1, 2)  # sorted by relative path
    assert torch.equal(got, want)
    fp = src.fingerprint()
    Image.fromarray(nhwc[6]).save(folder / "00.png")
    assert open_source(str(folder)).fingerprint() != fp

    grey = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "g-idx3-ubyte.gz", grey)
    idx = open_source(str(tmp_path / "g-idx3-ubyte.gz"), resolution=32)
    padded = next(iter(idx.batches(10)))
    assert padded.shape == (4, 1, 32, 32) and torch.equal(padded[:, 0, 2:30, 2:30], torch.from_numpy(grey))


def test_source_errors(tmp_path: Path) -> None:
    with pytest.raises(SkiptuneError, match="not found"):
        open_source(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SkiptuneError, match="no PNG/JPEG"):
        open_source(str(tmp_path / "empty"))
    np.savez(tmp_path / "f.npz", images=np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(SkiptuneError, match="expected uint8"):
        open_source(str(tmp_path / "f.npz"))


@pytest.mark.skipif(
    not DEFAULT_FMNIST_ROOT.is_dir(), reason="Fashion-MNIST not installed (dataset-fashion-mnist)"
)
def test_real_fashion_mnist() -> None:
    x, y = load_fashion_mnist("test", root=DEFAULT_FMNIST_ROOT)
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert torch.equal(torch.bincount(y), torch.full((10,), 1000))
    assert 60 < x.float().mean() < 90  # mean pixel of Fashion-MNIST is ~73
    src = open_source("fmnist:test", resolution=32)
    assert len(src) == 10000 and next(iter(src.batches(8))).shape == (8, 1, 32, 32)
