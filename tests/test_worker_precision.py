"""The worker samples through the fast path on CUDA by default; fp32 stays one flag away."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_precond

from skiptune.cli import build_parser
from skiptune.errors import SkiptuneError
from skiptune.nets.fast import FastDenoiser
from skiptune.search.worker.loop import _fast_net


def test_auto_on_cpu_is_the_plain_network() -> None:
    net = tiny_precond()
    assert _fast_net(net, torch.device("cpu"), "auto") == (net, "fp32")
    assert _fast_net(net, torch.device("cpu"), "fp32") == (net, "fp32")


def test_named_precision_wraps_the_network_and_keeps_its_parameters() -> None:
    net = tiny_precond()
    fast, label = _fast_net(net, torch.device("cpu"), "bf16")
    assert isinstance(fast, FastDenoiser) and fast.net is net and label == "bf16"
    assert fast.settings.precision == "bf16"


def test_bad_precision_is_a_user_error() -> None:
    with pytest.raises(SkiptuneError, match="fp8"):
        _fast_net(tiny_precond(), torch.device("cpu"), "fp8")


def test_cli_flag() -> None:
    args = build_parser().parse_args(["worker", "--model", "demo", "--precision", "fp32"])
    assert args.precision == "fp32"
    assert build_parser().parse_args(["worker", "--model", "demo"]).precision == "auto"


def test_a_study_keeps_the_precision_of_its_first_trial(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The first evaluated trial pins the study's precision; a worker in another one is refused in one
    line naming the --precision to pass, and records nothing."""
    from storage_fixtures import make_search_assets

    from skiptune.cli import main
    from skiptune.search.records import PRECISION_ATTR
    from skiptune.search.study import find_studies
    from skiptune.search.worker.precision import study_precision
    from skiptune.storage import open_storage

    assets = make_search_assets(tmp_path / "assets")
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    assert main([*assets.study_args(nfes="2", trials=3, storage=url), "--no-validate"]) == 0
    worker = ["worker", "--model", str(assets.model), "--device", "cpu", "--storage", url]
    assert main([*worker, "--precision", "fp32", "--max-trials", "1"]) == 0
    storage = open_storage(url)
    (study,) = find_studies(storage)
    assert study_precision(storage, study.study_id) == (0, "fp32")
    capsys.readouterr()
    assert main([*worker, "--precision", "bf16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "run in fp32" in err and "--precision fp32" in err, err
    trials = storage.get_all_trials(study.study_id)
    assert [t.user_attrs.get(PRECISION_ATTR) for t in trials if PRECISION_ATTR in t.user_attrs] == ["fp32"]
    assert main([*worker, "--precision", "fp32"]) == 0  # the matching precision carries on
    assert {t.user_attrs.get(PRECISION_ATTR) for t in storage.get_all_trials(study.study_id)} == {"fp32"}
