"""Write reference outputs of NVlabs/edm2's own networks for tests/test_nets_edm2.py.

EDM2's code cannot be committed here (its licence), so this tool imports it from a local export:

    mkdir -p /tmp/edm2_src && git -C /work/.mirror/NVlabs+edm2/repo archive HEAD | tar -x -C /tmp/edm2_src
    python tests/tools/make_edm2_reference.py --edm2-source /tmp/edm2_src --out tests/data/

For each tiny configuration it builds EDM2's ``Precond``, overwrites every weight matrix / kernel
with ``deterministic_parameters`` of tests/helpers.py (a function of name and shape only, so the test
rebuilds them without storing MBs of weights) and every scalar gain with an O(1) value (EDM2
initialises them to zero, which would zero the output and hide the embedding), and saves into
``edm2_<name>.pt``: the constructor kwargs, the state-dict keys and shapes in order, the small
tensors (gains and Fourier buffers), random inputs and EDM2's float32 outputs (denoised ``D``, raw
UNet ``F``, ``logvar``).
``edm2_full_configs.pt`` holds keys and shapes of EDM2's img64-S network, built on the meta device.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    # Unconditional; one 64-channel attention head at 8x8 (decoder in0 and the attn_resolutions blocks).
    "uncond": dict(
        img_resolution=16,
        img_channels=3,
        label_dim=0,
        use_fp16=False,
        model_channels=32,
        channel_mult=[1, 2],
        num_blocks=1,
        attn_resolutions=[8],
        logvar_channels=16,
    ),
    # Class-conditional, 4 heads of 8 channels, [1,3,3,1] resampling, non-default balances and widths.
    "cond": dict(
        img_resolution=16,
        img_channels=3,
        label_dim=10,
        use_fp16=True,  # ignored on the CPU: both implementations run float32
        sigma_data=0.6,
        model_channels=16,
        channel_mult=[1, 2],
        channel_mult_noise=2,
        channel_mult_emb=3,
        num_blocks=1,
        attn_resolutions=[8],
        label_balance=0.6,
        concat_balance=0.4,
        logvar_channels=16,
        channels_per_head=8,
        resample_filter=[1, 3, 3, 1],
        res_balance=0.35,
        attn_balance=0.25,
        clip_act=2.0,  # low enough to clip some activations of these random weights
    ),
}

# EDM2's img64-S network as train_edm2.py builds it for ImageNet-64 (keys and shapes only).
IMG64_S: dict[str, Any] = dict(
    img_resolution=64, img_channels=3, label_dim=1000, model_channels=192, dropout=0.0, use_fp16=True
)


def make_inputs(config: dict[str, Any], *, seed: int, batch: int = 4) -> dict[str, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    c, r = config["img_channels"], config["img_resolution"]
    sigma = torch.exp(torch.randn(batch, generator=gen) * 1.6 - 0.8)  # EDM2's img64 training distribution
    x = torch.randn(batch, c, r, r, generator=gen) * (sigma.reshape(-1, 1, 1, 1) ** 2 + 0.25).sqrt()
    labels = None
    if config["label_dim"]:
        idx = torch.randint(config["label_dim"], [batch], generator=gen)
        labels = torch.nn.functional.one_hot(idx, config["label_dim"]).to(torch.float32)
    return dict(x=x, sigma=sigma, class_labels=labels)


def randomize_(net: torch.nn.Module, *, seed: int) -> None:
    """Weights from ``deterministic_parameters``; scalar gains O(1) (stored in the fixture)."""
    from helpers import deterministic_parameters  # tests/helpers.py

    shapes = {k: tuple(p.shape) for k, p in net.named_parameters() if p.ndim >= 2}
    values = deterministic_parameters(shapes, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(values[name] if p.ndim >= 2 else 0.5 + torch.rand([], generator=gen))


def reference_record(networks: Any, name: str, config: dict[str, Any], seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    net = networks.Precond(**config).eval()
    randomize_(net, seed=seed)
    inputs = make_inputs(config, seed=seed + 1)
    with torch.no_grad():
        denoised, logvar = net(inputs["x"], inputs["sigma"], inputs["class_labels"], return_logvar=True)
        sigma = inputs["sigma"].reshape(-1, 1, 1, 1)  # type: ignore[union-attr]
        c_in = 1 / (net.sigma_data**2 + sigma**2).sqrt()
        raw = net.unet(c_in * inputs["x"], sigma.flatten().log() / 4, inputs["class_labels"])
    return dict(
        name=name,
        config=config,
        seed=seed,
        state_shapes=[(k, tuple(v.shape)) for k, v in net.state_dict().items()],
        small_tensors={k: v.clone() for k, v in net.state_dict().items() if v.ndim < 2},
        inputs=inputs,
        denoised=denoised,
        raw=raw,
        logvar=logvar,
    )


def full_config_shapes(networks: Any) -> dict[str, Any]:
    with torch.device("meta"):
        net = networks.Precond(**IMG64_S)
    return {"config": IMG64_S, "state_shapes": [(k, tuple(v.shape)) for k, v in net.state_dict().items()]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--edm2-source", type=Path, required=True, help="export of NVlabs/edm2")
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "data", help="output folder")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.edm2_source.resolve()))
    sys.path.insert(0, str(REPO / "tests"))  # not `tests.`: torch-fidelity installs a `tests` package
    from training import networks_edm2  # EDM2's module, from the export given

    args.out.mkdir(parents=True, exist_ok=True)
    for seed, (name, config) in enumerate(TINY_CONFIGS.items()):
        path = args.out / f"edm2_{name}.pt"
        torch.save(reference_record(networks_edm2, name, config, seed=200 + seed), path)
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    path = args.out / "edm2_full_configs.pt"
    torch.save(full_config_shapes(networks_edm2), path)
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
