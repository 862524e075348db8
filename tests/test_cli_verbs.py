"""The CLI imports only the verb it runs: ``skiptune train`` and ``skiptune --help`` work on a machine
where Optuna and SQLAlchemy cannot be imported, and every verb's ``--help`` works."""

from __future__ import annotations

import gzip
import importlib
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from skiptune.cli import VERBS, build_parser

REPO = Path(__file__).resolve().parents[1]

# Runs first in the subprocess: any import of these modules (or their submodules) fails, as it would
# on a GPU machine where they are not installed.
BLOCKER = textwrap.dedent(
    """
    import sys

    BLOCKED = ("optuna", "sqlalchemy", "torch_fidelity")

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    """
)


def _run_blocked(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _tiny_fashion_mnist(folder: Path, n: int = 8) -> None:
    """The four idx files of a Fashion-MNIST of ``n`` random images per split."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for stem in ("train", "t10k"):
        for kind, array in (("images-idx3", rng.integers(0, 256, (n, 28, 28))),
                            ("labels-idx1", rng.integers(0, 10, (n,)))):  # fmt: skip
            header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
            with gzip.open(folder / f"{stem}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + array.astype(np.uint8).tobytes())


def test_blocker_blocks(tmp_path: Path) -> None:
    done = _run_blocked("import optuna\n", tmp_path)
    assert done.returncode != 0 and "blocked by the test" in done.stderr


def test_train_and_help_run_without_optuna_and_sqlalchemy(tmp_path: Path) -> None:
    _tiny_fashion_mnist(tmp_path / "fmnist")
    done = _run_blocked(
        """
        import contextlib, io, sys
        from skiptune.cli import main

        for argv in (["--help"], ["train", "--help"], ["train", "diffusion", "--help"]):
            with contextlib.redirect_stdout(io.StringIO()) as out:
                try:
                    main(argv)
                except SystemExit as exit:
                    assert exit.code == 0, (argv, exit.code)
            assert "usage: skiptune" in out.getvalue(), argv
        verbs = sorted(m for m in sys.modules if m.startswith("skiptune.cli.") and m.endswith("_cmd"))
        assert verbs == ["skiptune.cli.train_cmd"], verbs

        code = main(["train", "diffusion", "--data", "fmnist", "--device", "cpu", "--steps", "2",
                     "--batch-size", "4", "--model-channels", "8", "--log-every", "1", "--out", "tiny.pt"])
        assert code == 0, code
        bad = [m for m in ("optuna", "sqlalchemy", "torch_fidelity") if m in sys.modules]
        assert not bad, bad
        print("trained")
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("trained") and (tmp_path / "tiny.pt").is_file()


def test_training_module_runs_without_the_cli(tmp_path: Path) -> None:
    done = _run_blocked(
        """
        import sys
        from skiptune.demo.training.__main__ import main
        try:
            main(["--help"])
        except SystemExit as exit:
            assert exit.code == 0
        assert not [m for m in sys.modules if m.startswith("skiptune.cli")], "skiptune.cli imported"
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "python -m skiptune.demo.training" in done.stdout


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_help_works(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        build_parser(verb).parse_args([verb, "--help"])
    assert exit.value.code == 0
    assert f"usage: skiptune {verb}" in capsys.readouterr().out
    # the index's one-line summary is the verb's own HELP (the index exists so --help imports no verb)
    module = importlib.import_module(f"skiptune.cli.{VERBS[verb].module}")
    assert VERBS[verb].summary == module.HELP
