"""Write reference outputs of NVlabs/edm's own ``VPPrecond`` / ``VEPrecond`` for tests/test_nets_precond.py.

EDM's code cannot be committed here (its licence), so this tool imports it from a local checkout:

    mkdir -p /tmp/edm_src && git -C /work/.mirror/NVlabs+edm/repo archive HEAD | tar -x -C /tmp/edm_src
    python tests/tools/make_precond_reference.py --edm-source /tmp/edm_src --out tests/data/

As make_edm_reference.py does, each tiny network gets ``deterministic_parameters`` of tests/helpers.py
(rebuilt by the test, not stored). ``precond_vp_ve.pt`` maps ``"vp"`` / ``"ve"`` to: the constructor
kwargs, parameter keys, state-dict keys and shapes, EDM's buffers, EDM's ``sigma_min`` /
``sigma_max``, random inputs (sigmas spread over the net's whole range) and EDM's float32 outputs;
``"defaults"`` maps each class name to EDM's ``(sigma_min, sigma_max)`` at default arguments.
(Not ``edm_*.pt``: tests/test_nets_edm.py treats every such file as an ``EDMPrecond`` reference.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]

CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    # DDPM++ as in EDM's baseline VP nets (positional embedding), class-conditional, augment labels.
    "vp": (
        "VPPrecond",
        dict(
            img_resolution=8,
            img_channels=3,
            label_dim=4,
            augment_dim=9,
            model_type="SongUNet",
            model_channels=16,
            channel_mult=[1, 2],
            num_blocks=1,
            attn_resolutions=[4],
            dropout=0.0,
            embedding_type="positional",
            encoder_type="standard",
            decoder_type="standard",
            channel_mult_noise=1,
            resample_filter=[1, 1],
            beta_d=18.5,
            beta_min=0.2,
            M=900,
            epsilon_t=2e-5,
        ),
    ),
    # NCSN++ as in EDM's baseline VE nets (fourier, residual encoder), unconditional, non-default range.
    "ve": (
        "VEPrecond",
        dict(
            img_resolution=8,
            img_channels=2,
            label_dim=0,
            model_type="SongUNet",
            model_channels=16,
            channel_mult=[1, 2],
            num_blocks=1,
            attn_resolutions=[4],
            dropout=0.0,
            embedding_type="fourier",
            encoder_type="residual",
            decoder_type="standard",
            channel_mult_noise=2,
            resample_filter=[1, 3, 3, 1],
            sigma_min=0.03,
            sigma_max=90.0,
        ),
    ),
}


def make_inputs(
    config: dict[str, Any], sigma_min: float, sigma_max: float, *, seed: int, batch: int = 4
) -> dict[str, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    c, r = config["img_channels"], config["img_resolution"]
    # Log-uniform over the supported range, so both ends of the preconditioning are exercised.
    u = torch.rand(batch, generator=gen)
    sigma = torch.exp(u * (torch.log(torch.tensor(sigma_max)) - torch.log(torch.tensor(sigma_min))))
    sigma = sigma * sigma_min
    x = torch.randn(batch, c, r, r, generator=gen) * (sigma.reshape(-1, 1, 1, 1) ** 2 + 0.25).sqrt()
    labels = None
    if config["label_dim"]:
        idx = torch.randint(config["label_dim"], [batch], generator=gen)
        labels = torch.nn.functional.one_hot(idx, config["label_dim"]).to(torch.float32)
    augment = torch.randn(batch, config["augment_dim"], generator=gen) if config.get("augment_dim") else None
    return dict(x=x, sigma=sigma, class_labels=labels, augment_labels=augment)


def reference_record(networks: Any, class_name: str, config: dict[str, Any], seed: int) -> dict[str, Any]:
    from helpers import deterministic_parameters  # tests/helpers.py

    torch.manual_seed(seed)
    net = getattr(networks, class_name)(**config).eval()
    shapes = {k: tuple(p.shape) for k, p in net.named_parameters()}
    state = net.state_dict()
    state.update(deterministic_parameters(shapes, seed=seed))
    net.load_state_dict(state, strict=True)
    buffers = {k: v.clone() for k, v in net.state_dict().items() if k not in shapes}
    inputs = make_inputs(config, net.sigma_min, net.sigma_max, seed=seed + 1)
    kw = {} if inputs["augment_labels"] is None else {"augment_labels": inputs["augment_labels"]}
    with torch.no_grad():
        denoised = net(inputs["x"], inputs["sigma"], inputs["class_labels"], **kw)
    return dict(
        class_name=class_name,
        seed=seed,
        config=config,
        param_keys=list(shapes),
        buffers=buffers,
        state_shapes=[(k, tuple(v.shape)) for k, v in net.state_dict().items()],
        sigma_min=net.sigma_min,
        sigma_max=net.sigma_max,
        inputs=inputs,
        denoised=denoised,
    )


def default_ranges(networks: Any) -> dict[str, tuple[float, float]]:
    """EDM's ``(sigma_min, sigma_max)`` of both classes at their default schedule parameters."""
    tiny = dict(
        img_resolution=4,
        img_channels=1,
        model_channels=8,
        channel_mult=[1],
        num_blocks=1,
        attn_resolutions=[],
    )
    nets = {"VPPrecond": networks.VPPrecond(**tiny), "VEPrecond": networks.VEPrecond(**tiny)}
    return {name: (net.sigma_min, net.sigma_max) for name, net in nets.items()}


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
    records = {
        key: reference_record(networks, class_name, config, seed=200 + i)
        for i, (key, (class_name, config)) in enumerate(CONFIGS.items())
    }
    records["defaults"] = default_ranges(networks)
    path = args.out / "precond_vp_ve.pt"
    torch.save(records, path)
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
