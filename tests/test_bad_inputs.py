"""Bad inputs through the CLI: one line naming the value, what was expected and what to do; exit 2;
nothing half-written left behind and nothing recorded as success.

Most cases run in-process through ``skiptune.cli.main`` (exit code and message); the ones that used
to end in a traceback, that need a fresh process (resource limits, privileges, spawned workers) or
that are about what is left on disk run as subprocesses. One tiny model/extractor/reference serves all.
"""

from __future__ import annotations

import os
import pickle
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from storage_fixtures import SearchAssets, make_search_assets

from skiptune.cli import main

REPO = Path(__file__).resolve().parents[1]
ADVICE = ("weights_only=False", "database server is running", "Traceback")


@dataclass(frozen=True)
class Files:
    """The shared assets plus deliberately broken files."""

    assets: SearchAssets
    root: Path
    rgb_model: Path
    nan_model: Path
    empty: Path
    truncated: Path
    code_pickle: Path
    garbage: Path
    no_images: Path
    images: Path
    pngs: Path
    not_db: Path
    db: Path

    def eval_args(self, *extra: str) -> list[str]:
        a = self.assets
        return [
            "eval", "--model", str(a.model), "--nfe", "2", "--sampler", "euler",
            "--extractor", f"torchscript:{a.extractor}", "--reference", str(a.reference),
            "--n-samples", "4", "--device", "cpu", "--no-progress", *extra,
        ]  # fmt: skip

    def stats_args(self, source: Path | str, out: Path | str, *extra: str) -> list[str]:
        return [
            "stats", "--source", str(source), "--extractor", f"torchscript:{self.assets.extractor}",
            "--out", str(out), "--device", "cpu", "--no-progress", "--no-cache", *extra,
        ]  # fmt: skip

    def sample_args(self, *extra: str) -> list[str]:
        return [
            "sample", "--model", str(self.assets.model), "--nfe", "2", "--sampler", "euler",
            "--seeds", "0-3", "--device", "cpu", *extra,
        ]  # fmt: skip


class _CodePickle:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("echo this must never run",))


def _tiny_model(path: Path, *, channels: int, nan: bool = False) -> Path:
    from helpers import TINY_SONG, tiny_precond

    from skiptune.nets.checkpoints import save_checkpoint

    small = {**TINY_SONG, "model_channels": 8, "attn_resolutions": []}
    net = tiny_precond("SongUNet", img_resolution=8, img_channels=channels, seed=7, **small)
    if nan:
        with torch.no_grad():
            next(net.parameters()).fill_(float("nan"))
    config = dict(img_resolution=8, img_channels=channels, label_dim=0, model_type="SongUNet", **small)
    return save_checkpoint(net, path, config=config)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    from PIL import Image

    root = tmp_path_factory.mktemp("bad_inputs")
    assets = make_search_assets(root / "assets")
    (root / "empty.npz").write_bytes(b"")
    good = assets.reference.read_bytes()
    (root / "truncated.npz").write_bytes(good[: len(good) // 2])
    torch.save({"weights": _CodePickle()}, root / "code.pt")
    (root / "garbage.pt").write_bytes(b"not a weights file at all")
    np.savez(root / "no_images.npz", images=np.zeros((0, 8, 8, 1), np.uint8))
    rng = np.random.default_rng(0)
    np.savez(root / "images.npz", images=rng.integers(0, 256, (12, 8, 8, 1), dtype=np.uint8))
    (root / "pngs").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(root / "pngs" / f"{i}.png")
    (root / "pngs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "not.db").write_bytes(b"this is not a SQLite database" * 64)
    db = root / "studies.db"
    study = [*assets.study_args(nfes="2", trials=2, storage=f"sqlite:///{db}"), "--no-validate"]
    assert main(study) == 0
    return Files(
        assets=assets, root=root, rgb_model=_tiny_model(root / "rgb.pt", channels=3),
        nan_model=_tiny_model(root / "nan.pt", channels=1, nan=True), empty=root / "empty.npz",
        truncated=root / "truncated.npz", code_pickle=root / "code.pt", garbage=root / "garbage.pt",
        no_images=root / "no_images.npz", images=root / "images.npz", pngs=root / "pngs",
        not_db=root / "not.db", db=db,
    )  # fmt: skip


def _one_line(err: str, *fragments: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    for advice in ADVICE:
        assert advice not in lines[0], lines[0]
    return lines[0]


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str], *fragments: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    return _one_line(capsys.readouterr().err, *fragments)


def _leftovers(folder: Path) -> list[str]:
    """Temporary or empty files an interrupted write would leave."""
    return sorted(
        p.name
        for p in folder.rglob("*")
        if p.is_file()
        and (".tmp" in p.name or ".probe" in p.name or (p.stat().st_size == 0 and p.name != "empty.npz"))
        and not p.name.endswith(("-wal", "-shm"))
    )


def _cli(
    argv: list[str], *, env: dict[str, str] | None = None, preexec: Callable[[], None] | None = None,
    prefix: list[str] | None = None, timeout: float = 120,
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO), full_env.get("PYTHONPATH", "")])
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "skiptune", *argv], capture_output=True, text=True,
        env=full_env, preexec_fn=preexec, timeout=timeout, cwd=REPO,
    )  # fmt: skip


# ------------------------------------------------------------------------------------ storage URLs


@pytest.mark.parametrize(
    ("url", "fragments"),
    [
        ("postgresql://u@localhost:abc/db", ("bad port", "localhost:abc", "1 to 65535")),
        ("postgresql://u:secret@localhost:99999/db", ("bad port", "1 to 65535")),
        ("grpc://localhost:abc", ("bad port",)),
        ("", ("empty --storage", "sqlite:///")),
        ("   ", ("empty --storage",)),
    ],
)
def test_bad_storage_urls(capsys: pytest.CaptureFixture[str], url: str, fragments: tuple[str, ...]) -> None:
    line = _refused(capsys, ["best", "--model", "tiny", "--nfe", "2", "--storage", url], *fragments)
    assert "secret" not in line


@pytest.mark.parametrize(
    "verb",
    [
        ["best", "--model", "tiny", "--nfe", "2"],
        ["table", "--model", "tiny"],
        ["study", "list"],
        ["report", "--model", "tiny", "--out", "{root}/report"],
        ["worker", "--model", "{model}", "--device", "cpu"],
        ["validate", "--model", "tiny", "--nfe", "2", "--sampler", "euler"],
    ],
)
def test_query_verbs_never_create_a_typod_sqlite_file(
    files: Files, capsys: pytest.CaptureFixture[str], verb: list[str]
) -> None:
    typo = files.root / "typo.db"
    argv = [a.format(root=files.root, model=files.assets.model) for a in verb]
    _refused(capsys, [*argv, "--storage", f"sqlite:///{typo}"], "no SQLite database", str(typo))
    assert not typo.exists()
    assert not (files.root / "report").exists()


def test_a_file_that_is_no_database_gets_sqlite_advice(
    files: Files, capsys: pytest.CaptureFixture[str]
) -> None:
    _refused(capsys, ["table", "--model", "tiny", "--storage", f"sqlite:///{files.not_db}"], "SQLite")
    _refused(
        capsys,
        [*files.assets.study_args(nfes="2", trials=2, storage=f"sqlite:///{files.not_db}"), "--no-validate"],
        "not a database", "SQLite database written by skiptune or Optuna",
    )  # fmt: skip


# ------------------------------------------------------------------------------ rho hard limits


@pytest.mark.parametrize("rho", [["-0.5", "1"], ["1", "2.5"], ["1", "50"]])
def test_eval_rho_outside_the_hard_limits(
    files: Files, capsys: pytest.CaptureFixture[str], rho: list[str]
) -> None:
    _refused(capsys, files.eval_args("--rho", *rho), "outside the hard limits [0, 2]")


def test_sample_rho_outside_the_hard_limits(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    out = files.root / "rho.png"
    _refused(capsys, files.sample_args("--rho", "1", "9", "--out", str(out)), "rho_top 9", "[0, 2]")
    assert not out.exists()


@pytest.mark.parametrize(
    ("option", "values"),
    [
        ("--rho-top-range", ["0.5", "50"]),
        ("--rho-bottom-range", ["0", "2.1"]),
        ("--rho-bottom-range", ["-1", "1"]),
    ],
)
def test_study_ranges_outside_the_hard_limits(
    files: Files, capsys: pytest.CaptureFixture[str], option: str, values: list[str]
) -> None:
    db = files.root / "ranges.db"
    argv = [*files.assets.study_args(nfes="2", trials=2, storage=f"sqlite:///{db}"), option, *values]
    _refused(capsys, argv, "range")
    assert not db.exists()


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--seed-base", str(2**32 - 10)], ("bad seed base 4294967286", "must lie in 0..4294967295")),
        (["--seed-base", "-1"], ("bad seed base -1",)),
        # the default held-out seeds (search seeds + 1,000,000,000) would pass 2^32 and wrap
        (["--seed-base", str(2**32 - 1_000_000_000 + 10)], ("held-out seed base", "--validate-seed-base")),
        (["--validate-seed-base", str(2**32 - 5)], ("held-out seed base 4294967291",)),
    ],
)
def test_seed_ranges_past_32_bits(
    files: Files, capsys: pytest.CaptureFixture[str], extra: list[str], fragments: tuple[str, ...]
) -> None:
    db = files.root / "seeds.db"
    argv = [*files.assets.study_args(nfes="2", trials=2, storage=f"sqlite:///{db}"), *extra]
    _refused(capsys, argv, *fragments)
    assert not db.exists()


def test_sample_seeds_past_32_bits(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    out = files.root / "wrapped.png"
    argv = files.sample_args("--seeds", "4294967290-4294967300", "--out", str(out))
    _refused(capsys, argv, "bad seed 4294967300", "32-bit")
    assert not out.exists()


def test_the_hard_limits_are_one_definition() -> None:
    from skiptune.search import space
    from skiptune.search.experiment import growth
    from skiptune.skips import RHO_HARD_LIMITS

    assert growth.RHO_HARD_LIMITS is RHO_HARD_LIMITS and space.RHO_HARD_LIMITS is RHO_HARD_LIMITS
    assert RHO_HARD_LIMITS == (0.0, 2.0)
    assert f"[{RHO_HARD_LIMITS[0]:g}, {RHO_HARD_LIMITS[1]:g}]" in (REPO / "README.md").read_text()


# --------------------------------------------------------------------- model vs extractor/reference


def test_three_channel_model_against_greyscale_statistics(
    files: Files, capsys: pytest.CaptureFixture[str]
) -> None:
    a = files.assets
    db = files.root / "rgb.db"
    _refused(
        capsys,
        [*files.eval_args()[:2], str(files.rgb_model), *files.eval_args()[3:]],
        "3-channel images", "1-channel",
    )  # fmt: skip
    create = a.study_args(nfes="2", trials=2, storage=f"sqlite:///{db}")
    create[create.index(str(a.model))] = str(files.rgb_model)
    _refused(capsys, create, "3-channel images")
    assert not db.exists()


def test_statistics_record_their_channels(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    from skiptune.objectives.reference import load_reference

    out = files.root / "grey.npz"
    assert main(files.stats_args(files.images, out)) == 0
    assert load_reference(out).channels == 1


def test_diffusers_unet_with_a_sigma_window_search_is_refused_at_creation(
    files: Files, capsys: pytest.CaptureFixture[str]
) -> None:
    diffusers = pytest.importorskip("diffusers")
    folder = files.root / "pipe"
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )  # fmt: skip
    unet.save_pretrained(folder / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    db = files.root / "diffusers.db"
    create = files.assets.study_args(nfes="2", trials=2, storage=f"sqlite:///{db}")
    create[create.index(str(files.assets.model))] = str(folder)
    _refused(capsys, [*create, "--sigma-window-range", "0.1", "10"], "sigma", "--sigma-window-range")
    assert not db.exists()


# -------------------------------------------------------------------------------- files read


@pytest.mark.parametrize(
    ("which", "fragments"),
    [("empty", ("file is empty",)), ("truncated", ("cannot read", "truncated"))],
)
def test_broken_reference_npz(
    files: Files, capsys: pytest.CaptureFixture[str], which: str, fragments: tuple[str, ...]
) -> None:
    path = getattr(files, which)
    argv = files.eval_args()
    argv[argv.index(str(files.assets.reference))] = str(path)
    _refused(capsys, argv, str(path), *fragments)


def test_reference_pt_with_code_is_refused_without_torch_advice(
    files: Files, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = files.eval_args()
    argv[argv.index(str(files.assets.reference))] = str(files.code_pickle)
    _refused(capsys, argv, "refused to load", "posix.system", "never runs code")


def test_extractor_weights_with_code_subprocess(files: Files) -> None:
    result = _cli(_classifier_args(files, files.code_pickle))
    assert result.returncode == 2, result.stderr
    _one_line(result.stderr, "refused to load", "classifier weights", "never runs code")
    assert "this must never run" not in result.stdout


def test_garbage_extractor_weights(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    _refused(capsys, _classifier_args(files, files.garbage), "cannot read", "classifier weights")


def _classifier_args(files: Files, weights: Path) -> list[str]:
    argv = files.eval_args("--extractor-weights", str(weights))
    argv[argv.index(f"torchscript:{files.assets.extractor}")] = "fmnist-classifier"
    return argv


def test_corrupt_png_in_a_stats_folder_subprocess(files: Files) -> None:
    out = files.root / "stats-pngs.npz"
    result = _cli(files.stats_args(files.pngs, out))
    assert result.returncode == 2, result.stderr
    _one_line(result.stderr, "broken.png", "remove or replace")
    assert not out.exists() and not _leftovers(files.root)


@pytest.mark.parametrize(
    ("source", "fragments"),
    [
        ("no_images", ("holds 0 images", "at least 2")),
        ("empty", ("file is empty",)),
        ("truncated", ("cannot read",)),
    ],
)
def test_bad_image_sources(
    files: Files, capsys: pytest.CaptureFixture[str], source: str, fragments: tuple[str, ...]
) -> None:
    out = files.root / f"stats-{source}.npz"
    _refused(capsys, files.stats_args(getattr(files, source), out), *fragments)
    assert not out.exists() and not _leftovers(files.root)


# ----------------------------------------------------------------------------- files written


def test_sample_out_without_image_extension_fails_before_sampling(files: Files) -> None:
    result = _cli(files.sample_args("--out", str(files.root / "grid"), "--seeds", "0-99999"), timeout=60)
    assert result.returncode == 2, result.stderr
    _one_line(result.stderr, "grid'", ".png")  # 100,000 samples would take far longer than the timeout
    assert not (files.root / "grid").exists()


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["stats", "{images}", "{root}/stats.txt"], (".npz",)),
        (["stats", "{images}", "{model}/below-a-file.npz"], ("cannot create the folder",)),
        (["stats", "{images}", "{root}"], ("is a folder",)),
        (["sample", "--out", "{root}"], ("is a folder",)),
        (["sample", "--out", "{root}/grid.txt"], ("ending in .png",)),
        (["sample", "--out", "{model}/grid.png"], ("cannot create the folder",)),
        (["sample", "--outdir", "{model}"], ("is a file",)),
        (["report", "--model", "tiny", "--out", "{model}", "--storage", "sqlite:///{db}"], ("is a file",)),
        (["demo", "--out", "{model}"], ("is a file",)),
    ],
)
def test_unwritable_output_paths(
    files: Files, capsys: pytest.CaptureFixture[str], argv: list[str], fragments: tuple[str, ...]
) -> None:
    fill = {"root": files.root, "model": files.assets.model, "images": files.images, "db": files.db}
    argv = [a.format(**fill) for a in argv]
    if argv[0] == "stats":
        argv = files.stats_args(argv[1], argv[2])
    elif argv[0] == "sample":
        argv = files.sample_args(*argv[1:])
    _refused(capsys, argv, *fragments)
    assert not _leftovers(files.root)


def test_statistics_cache_that_is_a_file(
    files: Files, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKIPTUNE_CACHE", str(files.assets.model))
    out = files.root / "cached.npz"
    argv = [a for a in files.stats_args(files.images, out) if a != "--no-cache"]
    _refused(capsys, argv, "statistics cache", "$SKIPTUNE_CACHE")
    assert not out.exists()


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:  # a full disk, for this process only: writes past `limit` bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("verb", ["stats", "sample"])
def test_full_disk_leaves_no_half_written_file(files: Files, tmp_path: Path, verb: str) -> None:
    out = tmp_path / ("stats.npz" if verb == "stats" else "grid.png")
    argv = (
        files.stats_args(files.images, out)
        if verb == "stats"
        else files.sample_args("--seeds", "0-63", "--out", str(out))
    )
    result = _cli(argv, preexec=_file_size_limit(600))
    assert result.returncode == 2, result.stderr
    _one_line(result.stderr, "cannot write", str(out), "File too large")
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file, no 0-byte grid.png


def _unprivileged() -> list[str]:
    """A command prefix under which file permissions apply (root ignores them unless its capabilities go)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: read-only folders cannot be made")
    return [setpriv, "--inh-caps=-all", "--bounding-set=-all"]


def test_read_only_folder_and_read_only_database(files: Files, tmp_path: Path) -> None:
    prefix = _unprivileged()
    folder = tmp_path / "ro"
    folder.mkdir()
    # a consistent copy: the fixture's database is in WAL mode, recent commits may sit in its -wal file
    with sqlite3.connect(files.db) as src, sqlite3.connect(folder / "studies.db") as dst:
        src.backup(dst)
    (folder / "studies.db").chmod(0o444)
    folder.chmod(0o555)
    try:
        result = _cli(files.stats_args(files.images, folder / "stats.npz"), prefix=prefix)
        assert result.returncode == 2, result.stderr
        _one_line(result.stderr, "cannot write", "Permission denied")
        # the query verbs read a database on a read-only disk or of another user
        result = _cli(
            ["table", "--model", "tiny", "--storage", f"sqlite:///{folder}/studies.db"], prefix=prefix
        )
        assert result.returncode == 0, result.stderr
        assert "tiny/euler/nfe=2" in result.stdout
        assert sorted(p.name for p in folder.iterdir()) == ["studies.db"]
    finally:
        folder.chmod(0o755)


# ------------------------------------------------------------------------------- workers, proxy


@pytest.mark.parametrize("count", ["-1", "0"])
def test_worker_max_trials_must_be_positive(
    files: Files, capsys: pytest.CaptureFixture[str], count: str
) -> None:
    argv = ["worker", "--model", str(files.assets.model), "--device", "cpu", "--max-trials", count]
    _refused(capsys, [*argv, "--storage", f"sqlite:///{files.db}"], f"--max-trials {count}", "positive")


def test_worker_seed_must_be_in_range(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["worker", "--model", str(files.assets.model), "--device", "cpu", "--seed", "-1"]
    _refused(capsys, [*argv, "--storage", f"sqlite:///{files.db}"], "--seed -1", "0..")


def test_study_seed_must_be_in_range(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    argv = files.assets.study_args(nfes="2", trials=2, storage=f"sqlite:///{files.root / 'seed.db'}")
    _refused(capsys, [*argv, "--seed", "-1"], "bad seed -1")
    assert not (files.root / "seed.db").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_worker_devices_without_cuda_subprocess(files: Files) -> None:
    result = _cli(
        ["worker", "--model", str(files.assets.model), "--devices", "0", "--storage", f"sqlite:///{files.db}"]
    )
    assert result.returncode == 2, result.stderr
    _one_line(result.stderr, "'cuda:0'", "CUDA is not available")


@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_proxy_port_out_of_range(files: Files, capsys: pytest.CaptureFixture[str], port: str) -> None:
    pytest.importorskip("grpc")
    _refused(
        capsys, ["proxy", "--port", port, "--storage", f"sqlite:///{files.db}"], f"--port {port}", "65535"
    )


def test_worker_whose_every_trial_failed_exits_non_zero(files: Files, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'nan.db'}"
    create = files.assets.study_args(nfes="2", trials=2, storage=db)
    create[create.index(str(files.assets.model))] = str(files.nan_model)
    assert main([*create, "--no-validate"]) == 0
    result = _cli(
        ["worker", "--model", str(files.nan_model), "--device", "cpu", "--max-trials", "1", "--storage", db]
    )
    assert result.returncode == 2, result.stderr
    assert "1 failed" in result.stdout
    assert "every trial this worker evaluated failed" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


def test_demo_checks_its_numbers_before_running(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    out = files.root / "demo-out"
    _refused(capsys, ["demo", "--n-samples", "0", "--out", str(out)], "--n-samples 0")
    _refused(capsys, ["demo", "--rungs", "9,1", "--out", str(out)], "rungs")
    _refused(capsys, ["demo", "--seed", "-1", "--out", str(out)], "--seed -1")
    assert not out.exists()


def test_pickle_with_code_never_runs(files: Files) -> None:
    """The fixture's code pickle really would run code if unpickled: the refusals above matter."""
    with open(files.code_pickle, "rb") as f:
        assert f.read(2) == b"PK"  # torch's zip format, holding a pickle that calls os.system
    with pytest.raises(pickle.UnpicklingError):
        torch.load(files.code_pickle, weights_only=True)


@pytest.mark.parametrize(
    ("storage", "fragment"), [("", "empty --storage"), ("mysql://x/y", "unsupported storage URL")]
)
def test_demo_checks_its_storage_before_running(
    files: Files, capsys: pytest.CaptureFixture[str], storage: str, fragment: str
) -> None:
    out = files.root / "demo-storage"
    _refused(capsys, ["demo", "--storage", storage, "--out", str(out)], fragment)
    assert not out.exists()


def test_extractor_given_images_of_another_size(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    out = files.root / "padded.npz"
    _refused(capsys, files.stats_args(files.images, out, "--resolution", "16"), "(1, 16, 16)", "--resolution")
    assert not out.exists()
