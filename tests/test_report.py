"""`skiptune report`: one distance-vs-NFE plot and one trial scatter per study, as real PNG files."""

from __future__ import annotations

import random
from pathlib import Path

import matplotlib.image
import pytest
from test_query import _fill
from test_study import make_spec

from skiptune.cli import main as cli
from skiptune.errors import SkiptuneError
from skiptune.report import write_report
from skiptune.search.study import create_studies
from skiptune.storage import open_storage


def test_report_writes_one_png_per_study_and_a_summary(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    create_studies(open_storage(url), [make_spec(5, n_trials=20), make_spec(9, n_trials=20)])
    rng = random.Random(0)
    for nfe in (5, 9):
        _fill(url, nfe, rng)
    paths = write_report(open_storage(url), "tiny", tmp_path / "out")
    names = sorted(p.name for p in paths)
    hashes = {nfe: make_spec(nfe).identity_hash for nfe in (5, 9)}
    assert names == [
        "distance_vs_nfe.png",
        f"trials_heun_nfe5_{hashes[5]}.png",
        f"trials_heun_nfe9_{hashes[9]}.png",
    ]
    for path in paths:
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.std() > 0.01  # a real, non-blank picture


def test_report_verb_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    with pytest.raises(SkiptuneError, match="no study for model 'tiny'"):
        write_report(open_storage(url), "tiny", tmp_path / "out")
    create_studies(open_storage(url), [make_spec(9)])  # no trial finished yet: plots still render
    assert cli(["report", "--model", "tiny", "--out", str(tmp_path / "o"), "--storage", url]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 2 and all(Path(p).is_file() for p in printed)
