"""EDM-compatible networks: parity with NVlabs/edm and the Skip-Tuning hooks.

Reference outputs come from EDM's own code (tests/tools/make_edm_reference.py writes tests/data/edm_*.pt).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import deterministic_parameters, tiny_precond

from skiptune.errors import SkiptuneError
from skiptune.nets.edm import BACKBONES, DhariwalUNet, EDMPrecond, SkipTunableBackbone, SongUNet
from skiptune.nets.layers import UNetBlock, self_attention

DATA = Path(__file__).parent / "data"
TINY_FILES = sorted(p.name for p in DATA.glob("edm_*.pt") if p.name != "edm_full_configs.pt")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def load_reference(name: str) -> dict[str, Any]:
    return torch.load(DATA / name, weights_only=False)


def our_net(ref: dict[str, Any]) -> EDMPrecond:
    net = EDMPrecond(**ref["config"]).eval()
    shapes = {k: tuple(p.shape) for k, p in net.named_parameters()}
    assert list(shapes) == ref["param_keys"]
    state = {**deterministic_parameters(shapes, seed=ref["seed"]), **ref["buffers"]}
    net.load_state_dict(state, strict=True)
    return net


# ---- parity with EDM -------------------------------------------------------------------------------


def test_reference_files_present() -> None:
    assert len(TINY_FILES) >= 5, "run tests/tools/make_edm_reference.py to create tests/data/edm_*.pt"


@pytest.mark.parametrize("name", ["cifar10_ddpmpp_cond", "afhq64_ncsnpp_uncond", "imagenet64_adm_cond"])
def test_full_size_state_dict_matches_edm(name: str) -> None:
    full = load_reference("edm_full_configs.pt")
    with torch.device("meta"):
        net = EDMPrecond(**full["configs"][name])
    ours = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    assert ours == full["state_shapes"][name]


@pytest.mark.parametrize("name", TINY_FILES)
def test_outputs_match_edm(name: str) -> None:
    ref = load_reference(name)
    net = our_net(ref)
    assert [(k, tuple(v.shape)) for k, v in net.state_dict().items()] == ref["state_shapes"]
    inp = ref["inputs"]
    kw = {} if inp["augment_labels"] is None else {"augment_labels": inp["augment_labels"]}
    with torch.no_grad():
        denoised = net(inp["x"], inp["sigma"], inp["class_labels"], **kw)
        sigma = inp["sigma"].reshape(-1, 1, 1, 1)
        c_in = 1 / (0.5**2 + sigma**2).sqrt()
        raw = net.model(c_in * inp["x"], sigma.log().flatten() / 4, inp["class_labels"], **kw)
    assert ref["raw"].std() > 0.1  # the reference is not degenerate
    assert rel_err(raw, ref["raw"]) <= 1e-5
    assert rel_err(denoised, ref["denoised"]) <= 1e-5


@pytest.mark.parametrize("name", [n for n in TINY_FILES if "_cond" in n or "augment" in n])
def test_integer_labels_equal_one_hot(name: str) -> None:
    ref = load_reference(name)
    net = our_net(ref)
    inp = ref["inputs"]
    kw = {} if inp["augment_labels"] is None else {"augment_labels": inp["augment_labels"]}
    with torch.no_grad():
        one_hot = net(inp["x"], inp["sigma"], inp["class_labels"], **kw)
        index = net(inp["x"], inp["sigma"], inp["class_labels"].argmax(1), **kw)
    assert torch.equal(one_hot, index)


def test_sdpa_attention_matches_softmax_formula() -> None:
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(4, 16, 25, generator=gen) * 2 for _ in range(3))
    w = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(16)).softmax(dim=2)
    expected = torch.einsum("nqk,nck->ncq", w, v)
    assert rel_err(self_attention(q, k, v), expected) <= 1e-6
    heads = [t.reshape(2, 2, 16, 25) for t in (q, k, v)]  # [N, heads, C, P] as EDM2's blocks pass
    assert rel_err(self_attention(*heads), expected.reshape(2, 2, 16, 25)) <= 1e-6


def record_sdpa_inputs(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Record q, k, v of every scaled_dot_product_attention call from now on."""
    seen: list[torch.Tensor] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args: torch.Tensor, **kwargs: object) -> torch.Tensor:
        seen.extend(args[:3])
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return seen


def test_sdpa_gets_inputs_its_fused_kernels_accept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flash / memory-efficient attention need 4-D inputs with a contiguous last dimension; anything
    else silently runs SDPA's float32 math fallback (measured: 43% of ADM's forward on an H100)."""
    seen = record_sdpa_inputs(monkeypatch)
    qkv = torch.randn(2, 3 * 8, 4, 4).to(memory_format=torch.channels_last)  # as a qkv conv leaves it
    q, k, v = qkv.reshape(2 * 2, 4, 3, 16).unbind(2)
    self_attention(q, k, v)
    assert [t.dim() for t in seen] == [4, 4, 4]
    assert all(t.stride(-1) == 1 and t.is_contiguous() for t in seen)


# ---- skip counting ---------------------------------------------------------------------------------


def test_adm_imagenet64_has_16_skips() -> None:
    # Encoder pushes: level 0 conv + 3 blocks, then (down + 3 blocks) at 3 more levels = 4 * 4 = 16.
    # Each down block keeps the previous level's width, so innermost first: 3 x 768, then 576 (down)
    # + 3 x 576, 384 + 3 x 384, 192 + 3 x 192 + the 192-channel input conv.
    with torch.device("meta"):
        net = DhariwalUNet(img_resolution=64, in_channels=3, out_channels=3, label_dim=1000)
    assert net.num_skips == 16
    assert net.skip_channels() == [768] * 3 + [576] * 4 + [384] * 4 + [192] * 5


def test_cifar10_ddpmpp_has_15_skips() -> None:
    # channel_mult [2,2,2], num_blocks 4: conv + 4 blocks at 32x32, down + 4 blocks at 16x16 and 8x8:
    # 5 + 5 + 5 = 15 skips; every one has 256 channels except the first conv's 128.
    with torch.device("meta"):
        net = SongUNet(
            img_resolution=32,
            in_channels=3,
            out_channels=3,
            model_channels=128,
            channel_mult=[2, 2, 2],
            num_blocks=4,
        )
    assert net.num_skips == 15
    assert net.skip_channels() == [256] * 14 + [128]


# ---- Skip-Tuning hooks -----------------------------------------------------------------------------


def record_skips(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Record the second operand of every 4-D torch.cat, i.e. the (scaled) skip the decoder appends."""
    seen: list[torch.Tensor] = []
    real_cat = torch.cat

    def cat(tensors: Any, dim: int = 0) -> torch.Tensor:
        if len(tensors) == 2 and tensors[0].ndim == 4:
            seen.append(tensors[1].clone())
        return real_cat(tensors, dim=dim)

    monkeypatch.setattr(torch, "cat", cat)
    return seen


def inputs(net: EDMPrecond, batch: int = 3, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    r, c = net.img_resolution, net.img_channels
    x = torch.randn(batch, c, r, r, generator=gen)
    return x, torch.exp(torch.randn(batch, generator=gen))


def run(net: EDMPrecond, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(x, sigma, torch.arange(x.shape[0]) % max(net.label_dim, 1) if net.label_dim else None)


SKIP_NETS = [
    ("SongUNet", {}),
    (
        "SongUNet",
        dict(encoder_type="residual", decoder_type="skip", embedding_type="fourier", channel_mult_noise=2),
    ),
    ("SongUNet", dict(encoder_type="skip", channel_mult=[1, 2, 2], attn_resolutions=[4])),
    ("DhariwalUNet", {}),
]


@pytest.mark.parametrize(("model_type", "kw"), SKIP_NETS)
def test_each_skip_gets_its_own_coefficient(
    model_type: str, kw: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    net = tiny_precond(model_type, label_dim=4, **kw)
    x, sigma = inputs(net)
    seen = record_skips(monkeypatch)
    run(net, x, sigma)
    plain = list(seen)
    assert len(plain) == net.model.num_skips
    assert [s.shape[1] for s in plain] == net.model.skip_channels()
    for j in range(net.model.num_skips):
        coef = 0.5 + 0.1 * j
        net.model.skip_coefficients.fill_(1.0)[j] = coef
        seen.clear()
        run(net, x, sigma)
        assert all(torch.equal(seen[i], plain[i]) for i in range(j))  # earlier skips untouched
        assert torch.equal(seen[j], plain[j] * torch.tensor(coef, dtype=torch.float32))


@pytest.mark.parametrize("model_type", ["SongUNet", "DhariwalUNet"])
def test_skips_equal_scaled_encoder_outputs(model_type: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # With every coefficient distinct at once: skip j == coef[j] * (encoder output it came from).
    net = tiny_precond(model_type)
    coef = torch.linspace(0.6, 1.4, net.model.num_skips)
    net.model.skip_coefficients.copy_(coef)
    encoded: list[torch.Tensor] = []
    for module in net.model.enc.values():
        module.register_forward_hook(lambda _m, _i, out: encoded.append(out.clone()))
    seen = record_skips(monkeypatch)
    run(net, *inputs(net))
    assert len(seen) == len(encoded) == net.model.num_skips
    for j, skip in enumerate(seen):
        assert torch.equal(skip, encoded[-1 - j] * coef[j])


def bypassed(
    net: EDMPrecond, x: torch.Tensor, sigma: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> torch.Tensor:
    with monkeypatch.context() as m:
        m.setattr(SkipTunableBackbone, "_scaled_skip", staticmethod(lambda skip, _f, _j: skip))
        return run(net, x, sigma)


@pytest.mark.parametrize("model_type", ["SongUNet", "DhariwalUNet"])
def test_unit_coefficients_are_bit_identical(model_type: str, monkeypatch: pytest.MonkeyPatch) -> None:
    net = tiny_precond(model_type, label_dim=3)
    x, sigma = inputs(net, batch=4)
    reference = bypassed(net, x, sigma, monkeypatch)
    assert torch.equal(run(net, x, sigma), reference)
    net.skip_window.copy_(torch.tensor([0.5, 2.0]))
    assert torch.equal(run(net, x, sigma), reference)


@pytest.mark.parametrize("model_type", ["SongUNet", "DhariwalUNet"])
def test_skip_window_selects_samples(model_type: str, monkeypatch: pytest.MonkeyPatch) -> None:
    net = tiny_precond(model_type)
    x, _ = inputs(net, batch=4)
    sigma = torch.tensor([0.1, 1.0, 5.0, 2.0])
    untuned = bypassed(net, x, sigma, monkeypatch)
    net.model.skip_coefficients.copy_(torch.linspace(0.7, 1.3, net.model.num_skips))
    net.skip_window.copy_(torch.tensor([0.5, 2.0]))  # inclusive: sigma 1.0 and 2.0 are inside
    tuned = run(net, x, sigma)
    for i, inside in enumerate([False, True, False, True]):
        if inside:
            assert rel_err(tuned[i], untuned[i]) > 1e-4
        else:
            assert torch.equal(tuned[i], untuned[i])


def test_skip_buffers_are_not_persistent() -> None:
    net = tiny_precond("DhariwalUNet")
    keys = net.state_dict().keys()
    assert not any("skip_coefficients" in k or "skip_window" in k for k in keys)
    assert net.model.skip_coefficients.dtype == torch.float32
    assert torch.equal(net.model.skip_coefficients, torch.ones(net.model.num_skips))
    assert net.skip_window.tolist() == [-math.inf, math.inf]


def test_coefficient_change_does_not_recompile() -> None:
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    net = tiny_precond("SongUNet", channel_mult=[1], num_blocks=1, img_resolution=8)
    compiled = torch.compile(net, backend=counter, fullgraph=True)
    x, sigma = inputs(net)
    with torch.no_grad():
        first = compiled(x, sigma)
        net.model.skip_coefficients.fill_(0.8)
        net.skip_window.copy_(torch.tensor([0.5, 3.0]))
        second = compiled(x, sigma)
    assert counter.frame_count == 1
    assert not torch.equal(first, second)
    torch._dynamo.reset()


# ---- preconditioning and constructor behaviour --------------------------------------------------------


def test_precond_matches_edm_formulas() -> None:
    net = tiny_precond("SongUNet", img_resolution=8)
    x, sigma = inputs(net)
    s = sigma.reshape(-1, 1, 1, 1).double()
    with torch.no_grad():
        raw = net.model((x / (0.25 + s**2).sqrt()).float(), (s.log() / 4).flatten().float(), None).double()
    expected = 0.25 / (s**2 + 0.25) * x.double() + s * 0.5 / (s**2 + 0.25).sqrt() * raw
    assert rel_err(run(net, x, sigma).double(), expected) <= 1e-6
    assert net.round_sigma(0.3).item() == pytest.approx(0.3)
    for attr in (
        "img_resolution",
        "img_channels",
        "label_dim",
        "sigma_min",
        "sigma_max",
        "sigma_data",
        "use_fp16",
    ):
        assert hasattr(net, attr)


def test_use_fp16_is_ignored_on_cpu() -> None:
    half = tiny_precond("DhariwalUNet", img_resolution=8)
    half.use_fp16 = True
    x, sigma = inputs(half)
    out = run(half, x, sigma)
    assert out.dtype == torch.float32
    half.use_fp16 = False
    assert torch.equal(out, run(half, x, sigma))


def test_label_dropout_only_in_training() -> None:
    net = tiny_precond("SongUNet", label_dim=4, img_resolution=8, label_dropout=1.0)
    x, sigma = inputs(net)
    labels = torch.tensor([0, 1, 2])
    with torch.no_grad():
        uncond = net(x, sigma, None)
        assert not torch.allclose(net(x, sigma, labels), uncond)
        net.train()  # dropout=0 in the tiny nets, so only the labels are dropped
        assert torch.equal(net(x, sigma, labels), uncond)


def test_augment_labels_are_optional() -> None:
    net = tiny_precond("DhariwalUNet", img_resolution=8, augment_dim=9)
    x, sigma = inputs(net)
    with torch.no_grad():
        plain = net(x, sigma)
        augmented = net(x, sigma, augment_labels=torch.randn(3, 9))
    assert not torch.allclose(plain, augmented)


def test_backbones_registered() -> None:
    assert BACKBONES.names() == ["DhariwalUNet", "SongUNet"]
    assert BACKBONES.get("SongUNet") is SongUNet


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(model_type="UNet2D"), "backbone 'UNet2D'"),
        (dict(model_type="SongUNet", encoder_type="dense"), "encoder_type='dense'"),
        (dict(model_type="SongUNet", embedding_type="sin"), "embedding_type='sin'"),
        (dict(model_type="SongUNet", decoder_type="residual"), "decoder_type='residual'"),
        (dict(model_type="DhariwalUNet", channel_mult=[1, 2, 2, 2, 2, 2]), "img_resolution=16"),
        (dict(model_type="DhariwalUNet", encoder_type="skip"), "encoder_type"),
    ],
)
def test_bad_configuration_raises(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(SkiptuneError, match=match):
        EDMPrecond(img_resolution=16, img_channels=3, **kwargs)


def test_missing_class_labels_on_backbone_raises() -> None:
    net = tiny_precond("SongUNet", label_dim=4, img_resolution=8)
    x, sigma = inputs(net)
    with pytest.raises(SkiptuneError, match="class_labels=None"):
        net.model(x, sigma.log() / 4, None)


def test_block_attention_hands_sdpa_views_of_the_qkv_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """In channels_last, q, k, v reach SDPA as views of the qkv convolution's output with a contiguous
    last dimension (fused kernels, no copies); the result equals the plain layout's."""
    torch.manual_seed(0)
    block = UNetBlock(16, 16, emb_channels=8, attention=True, channels_per_head=8, init_zero={}).eval()
    x, emb = torch.randn(2, 16, 4, 4), torch.randn(2, 8)
    with torch.no_grad():
        ref = block(x, emb)
        seen = record_sdpa_inputs(monkeypatch)
        out = block(x.to(memory_format=torch.channels_last), emb)
    assert rel_err(out, ref) <= 1e-6
    q, k, v = seen
    assert q.shape == (2, 2, 16, 8) and all(t.stride(-1) == 1 for t in seen)
    assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr() == v.untyped_storage().data_ptr()



@pytest.mark.parametrize("channels_last", [False, True])
def test_skip_concatenation_keeps_the_memory_format(channels_last: bool) -> None:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x, skip = (torch.randn(2, c, 4, 4).to(memory_format=fmt) for c in (3, 5))
    factors = torch.tensor([[1.0, 0.5], [1.0, 2.0]])
    out = tiny_precond("SongUNet").model._concat_skip(x, skip, factors, 1)
    assert torch.equal(out, torch.cat([x, skip * factors[:, 1].reshape(-1, 1, 1, 1)], dim=1))
    assert out.is_contiguous(memory_format=fmt)
