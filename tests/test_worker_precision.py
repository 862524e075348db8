"""The worker samples through the fast path on CUDA by default; fp32 stays one flag away."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_precond

from skiptune.cli import build_parser
from skiptune.errors import SkiptuneError
from skiptune.nets.fast import FastDenoiser
from skiptune.search.worker import _fast_net


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
