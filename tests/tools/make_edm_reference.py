"""Write reference outputs of NVlabs/edm's own networks for tests/test_nets_edm.py.

EDM's code cannot be committed here (its licence), so this tool imports it from a local checkout:

    mkdir -p /tmp/edm_src && git -C /work/.mirror/NVlabs+edm/repo archive HEAD | tar -x -C /tmp/edm_src
    python tests/tools/make_edm_reference.py --edm-source /tmp/edm_src --out tests/data/

For each tiny configuration it builds EDM's ``EDMPrecond``, overwrites every parameter with
``deterministic_parameters`` of tests/helpers.py (a function of name and shape only, so the test can rebuild
the identical weights without storing them: this keeps the fixtures a few kB instead of MBs), keeps
EDM's own buffers, and saves into ``edm_<name>.pt``: the constructor kwargs, the state-dict keys and
shapes in order, the buffers, random inputs and EDM's float32 outputs (preconditioned ``D`` and raw
backbone ``F``). ``edm_full_configs.pt`` holds keys and shapes of EDM's full-size training configs,
built on the meta device (no memory, no weights).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    # DDPM++ (positional embedding, standard encoder/decoder), unconditional, 3 levels, attention at 8x8.
    "song_ddpmpp_uncond": dict(
        img_resolution=16,
        img_channels=3,
        label_dim=0,
        model_type="SongUNet",
        model_channels=16,
        channel_mult=[1, 2, 2],
        num_blocks=1,
        attn_resolutions=[8],
        dropout=0.0,
        embedding_type="positional",
        encoder_type="standard",
        decoder_type="standard",
        channel_mult_noise=1,
        resample_filter=[1, 1],
    ),
    # NCSN++ (fourier, residual encoder) with the skip decoder, class-conditional.
    "song_ncsnpp_cond": dict(
        img_resolution=16,
        img_channels=3,
        label_dim=10,
        model_type="SongUNet",
        model_channels=16,
        channel_mult=[1, 2],
        num_blocks=2,
        attn_resolutions=[8],
        dropout=0.0,
        embedding_type="fourier",
        encoder_type="residual",
        decoder_type="skip",
        channel_mult_noise=2,
        resample_filter=[1, 3, 3, 1],
    ),
    # Skip encoder + skip decoder, labels and augmentation labels, 8x8 input, 3 levels.
    "song_skipenc_augment": dict(
        img_resolution=8,
        img_channels=2,
        label_dim=4,
        model_type="SongUNet",
        augment_dim=9,
        model_channels=8,
        channel_mult=[1, 2, 2],
        num_blocks=1,
        attn_resolutions=[4],
        dropout=0.0,
        embedding_type="positional",
        encoder_type="skip",
        decoder_type="skip",
        channel_mult_noise=1,
        resample_filter=[1, 3, 3, 1],
    ),
    # ADM: 2 attention heads (128 channels at 4x4), labels and augmentation labels.
    "dhariwal_cond_heads": dict(
        img_resolution=8,
        img_channels=3,
        label_dim=5,
        model_type="DhariwalUNet",
        augment_dim=9,
        model_channels=32,
        channel_mult=[1, 4],
        num_blocks=1,
        attn_resolutions=[4],
        dropout=0.0,
    ),
    # ADM unconditional, 3 levels, no attention layers (channels < 64 per head).
    "dhariwal_uncond": dict(
        img_resolution=16,
        img_channels=3,
        label_dim=0,
        model_type="DhariwalUNet",
        model_channels=16,
        channel_mult=[1, 2, 2],
        num_blocks=2,
        attn_resolutions=[8],
        dropout=0.0,
    ),
}

# EDM's train.py architectures at full size (keys/shapes only).
FULL_CONFIGS: dict[str, dict[str, Any]] = {
    "cifar10_ddpmpp_cond": dict(
        img_resolution=32,
        img_channels=3,
        label_dim=10,
        model_type="SongUNet",
        augment_dim=9,
        embedding_type="positional",
        encoder_type="standard",
        decoder_type="standard",
        channel_mult_noise=1,
        resample_filter=[1, 1],
        model_channels=128,
        channel_mult=[2, 2, 2],
    ),
    "afhq64_ncsnpp_uncond": dict(
        img_resolution=64,
        img_channels=3,
        label_dim=0,
        model_type="SongUNet",
        augment_dim=9,
        embedding_type="fourier",
        encoder_type="residual",
        decoder_type="standard",
        channel_mult_noise=2,
        resample_filter=[1, 3, 3, 1],
        model_channels=128,
        channel_mult=[1, 2, 2, 2],
    ),
    "imagenet64_adm_cond": dict(
        img_resolution=64,
        img_channels=3,
        label_dim=1000,
        model_type="DhariwalUNet",
        model_channels=192,
        channel_mult=[1, 2, 3, 4],
    ),
}


def make_inputs(config: dict[str, Any], *, seed: int, batch: int = 3) -> dict[str, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    c, r = config["img_channels"], config["img_resolution"]
    sigma = torch.exp(torch.randn(batch, generator=gen) * 1.2 - 1.2)  # EDM's training sigma distribution
    x = torch.randn(batch, c, r, r, generator=gen) * (sigma.reshape(-1, 1, 1, 1) ** 2 + 0.25).sqrt()
    labels = None
    if config["label_dim"]:
        idx = torch.randint(config["label_dim"], [batch], generator=gen)
        labels = torch.nn.functional.one_hot(idx, config["label_dim"]).to(torch.float32)
    augment = torch.randn(batch, config["augment_dim"], generator=gen) if config.get("augment_dim") else None
    return dict(x=x, sigma=sigma, class_labels=labels, augment_labels=augment)


def make_sigma_column(sigma: torch.Tensor | None) -> torch.Tensor:
    assert sigma is not None
    return sigma.reshape(-1, 1, 1, 1)


def reference_record(networks: Any, name: str, config: dict[str, Any], seed: int) -> dict[str, Any]:
    from helpers import deterministic_parameters  # tests/helpers.py

    torch.manual_seed(seed)
    net = networks.EDMPrecond(**config).eval()
    shapes = {k: tuple(p.shape) for k, p in net.named_parameters()}
    state = net.state_dict()
    state.update(deterministic_parameters(shapes, seed=seed))
    net.load_state_dict(state, strict=True)
    buffers = {k: v.clone() for k, v in net.state_dict().items() if k not in shapes}
    inputs = make_inputs(config, seed=seed + 1)
    kw = {} if inputs["augment_labels"] is None else {"augment_labels": inputs["augment_labels"]}
    with torch.no_grad():
        denoised = net(inputs["x"], inputs["sigma"], inputs["class_labels"], **kw)
        sigma = make_sigma_column(inputs["sigma"])
        c_in = 1 / (net.sigma_data**2 + sigma**2).sqrt()
        raw = net.model(c_in * inputs["x"], sigma.log().flatten() / 4, inputs["class_labels"], **kw)
    return dict(
        name=name,
        seed=seed,
        config=config,
        param_keys=list(shapes),
        state_shapes=[(k, tuple(v.shape)) for k, v in net.state_dict().items()],
        buffers=buffers,
        inputs=inputs,
        denoised=denoised,
        raw=raw,
    )


def full_config_shapes(networks: Any) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    out = {}
    for name, config in FULL_CONFIGS.items():
        with torch.device("meta"):
            net = networks.EDMPrecond(**config)
        out[name] = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    return {"configs": FULL_CONFIGS, "state_shapes": out}  # type: ignore[dict-item]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--edm-source", type=Path, required=True, help="checkout of NVlabs/edm")
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "data", help="output folder")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.edm_source.resolve()))
    sys.path.insert(0, str(REPO / "tests"))  # not `tests.`: torch-fidelity installs a `tests` package
    from training import networks  # EDM's module, from the checkout given

    args.out.mkdir(parents=True, exist_ok=True)
    for seed, (name, config) in enumerate(TINY_CONFIGS.items()):
        path = args.out / f"edm_{name}.pt"
        torch.save(reference_record(networks, name, config, seed=100 + seed), path)
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    path = args.out / "edm_full_configs.pt"
    torch.save(full_config_shapes(networks), path)
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
