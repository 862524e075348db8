"""``skiptune sample`` end to end on a tiny random EDM network saved as a checkpoint (CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_SONG, tiny_precond
from PIL import Image

from skiptune.cli import main
from skiptune.nets.checkpoints import load_checkpoint, save_checkpoint
from skiptune.sampling import generate_images
from skiptune.skips import SkipSchedule, skip_tuning
from skiptune.storage import open_storage

RES = 16


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny nets: threads only contend on a shared machine
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    net = tiny_precond("SongUNet", img_resolution=RES, img_channels=1)
    config = {"img_resolution": RES, "img_channels": 1, "label_dim": 0, "model_type": "SongUNet",
              **TINY_SONG}  # fmt: skip
    return save_checkpoint(net, tmp_path_factory.mktemp("model") / "tiny.pt", config=config)


def _expected(path: Path, seeds: list[int], schedule: SkipSchedule) -> torch.Tensor:
    """The same images computed directly through the library (another batch size: CRN holds)."""
    net = load_checkpoint(path)
    with skip_tuning(net, schedule):
        batches = generate_images(net, sampler="heun", nfe=3, seeds=seeds, batch_size=5, device="cpu")
        return torch.cat(list(batches))


def test_grid_matches_library_images(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    argv = ["sample", "--model", str(checkpoint), "--nfe", "3", "--seeds", "0-5", "--out", str(out),
            "--device", "cpu", "--batch-size", "4"]  # fmt: skip
    assert main(argv) == 0
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 * RES, 3 * RES)  # 6 samples -> 2 rows x 3 columns, grayscale
    expected = _expected(checkpoint, list(range(6)), SkipSchedule())
    for k in range(6):
        r, c = divmod(k, 3)
        tile = grid[r * RES : (r + 1) * RES, c * RES : (c + 1) * RES]
        np.testing.assert_array_equal(tile, expected[k, 0].numpy())


def test_outdir_with_rho_writes_tuned_pngs(checkpoint: Path, tmp_path: Path) -> None:
    outdir = tmp_path / "imgs"
    argv = ["sample", "--model", str(checkpoint), "--nfe", "3", "--seeds", "3,7", "--rho", "0.5", "1.5",
            "--outdir", str(outdir), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    assert sorted(p.name for p in outdir.iterdir()) == ["000003.png", "000007.png"]
    tuned = _expected(checkpoint, [3, 7], SkipSchedule(0.5, 1.5))
    untuned = _expected(checkpoint, [3, 7], SkipSchedule())
    assert not torch.equal(tuned, untuned)  # the coefficients reach the network
    for k, seed in enumerate([3, 7]):
        np.testing.assert_array_equal(np.asarray(Image.open(outdir / f"{seed:06d}.png")), tuned[k, 0].numpy())


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--nfe", "4"], "nearest valid NFE: 3 or 5"),
     (["--nfe", "3", "--sigma-window", "0.1", "1"], "--sigma-window needs --rho"),
     (["--nfe", "3", "--tuned"], "no study for model 'tiny'")],
)  # fmt: skip
def test_user_errors_are_one_line(checkpoint: Path, tmp_path: Path, capsys, extra, message) -> None:
    argv = ["sample", "--model", str(checkpoint), "--out", str(tmp_path / "x.png"), "--device", "cpu",
            "--storage", f"sqlite:///{tmp_path / 'db.sqlite'}", *extra]  # fmt: skip
    open_storage(f"sqlite:///{tmp_path / 'db.sqlite'}")  # an empty database: --tuned never creates one
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.png").exists()


def test_a_window_without_sampler_levels_says_the_images_are_untuned(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Heun NFE 3 evaluates the net at sigma 80 and 0.002 only: [0.01, 1] holds neither."""
    argv = ["sample", "--model", str(checkpoint), "--nfe", "3", "--seeds", "0-1", "--rho", "0.5", "1.5",
            "--sigma-window", "0.01", "1", "--device", "cpu"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "w.png")]) == 0
    assert "holds none of the noise levels heun evaluates" in capsys.readouterr().out
    assert main(["sample", "--model", str(checkpoint), "--nfe", "3", "--seeds", "0-1", "--device", "cpu",
                 "--out", str(tmp_path / "u.png")]) == 0  # fmt: skip
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "w.png")),
                                  np.asarray(Image.open(tmp_path / "u.png")))  # fmt: skip
