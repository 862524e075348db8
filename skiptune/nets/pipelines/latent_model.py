"""A latent model file: a small JSON naming a denoiser checkpoint and the VAE folder that decodes it.

EDM2's ImageNet-512 networks sample 4x64x64 latents of Stability's VAE, which their pickles do not
contain. ``--model edm2-xs.json`` with

    {"format": "skiptune-latent", "denoiser": "edm2-img512-xs-2147483-0.135.pkl",
     "vae": "sd-vae-ft-mse", "latents": "edm2"}

(paths relative to the JSON file) loads the pickle as usual (restricted unpickler) and the VAE as a
diffusers ``AutoencoderKL`` folder (safetensors), and gives the net a ``decode`` (the VAE decoder with
EDM2's latent scaling) and the decoded image size. Everything else about the net is unchanged: its
Skip-Tuning buffers, sigma windows, class labels and fast path. The VAE's weights are a submodule, so
the fingerprint covers them; its config is hashed in as ``extra_identity``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch

from skiptune.errors import SkiptuneError
from skiptune.nets.pipelines.folder import config_identity, read_json
from skiptune.nets.pipelines.latent import LatentDecoder, edm2_decoder, load_vae

FORMAT = "skiptune-latent"
# latent family name -> decoder of that family's latents
LATENT_FAMILIES: dict[str, Callable[..., LatentDecoder]] = {"edm2": edm2_decoder}


def load_latent_model(path: Path, *, load_denoiser: Callable[[Path], torch.nn.Module]) -> torch.nn.Module:
    """The denoiser named by the JSON file at ``path``, with its VAE decoder attached."""
    spec = read_json(path)
    if spec.get("format") != FORMAT or not {"denoiser", "vae", "latents"} <= set(spec):
        raise SkiptuneError(
            f'{path}: expected a latent model file {{"format": "{FORMAT}", "denoiser": PATH, '
            '"vae": FOLDER, "latents": "edm2"}; see skiptune/nets/pipelines/latent_model.py'
        )
    family = str(spec["latents"])
    if family not in LATENT_FAMILIES:
        raise SkiptuneError(
            f"{path}: latents {family!r} are not known; expected one of {', '.join(LATENT_FAMILIES)}"
        )
    net = load_denoiser(path.parent / str(spec["denoiser"]))
    vae_dir = path.parent / str(spec["vae"])
    vae = load_vae(vae_dir)
    latent_channels = int(vae.config.latent_channels)  # type: ignore[union-attr,arg-type]
    channels, resolution = int(getattr(net, "img_channels", 0)), int(getattr(net, "img_resolution", 0))
    if latent_channels != channels:
        raise SkiptuneError(
            f"{path}: the VAE in {vae_dir} has {latent_channels} latent channels but the "
            f"denoiser samples {channels}; pair the model with the VAE it was trained on"
        )
    decoder = LATENT_FAMILIES[family](vae, latent_resolution=resolution)
    return attach_decoder(
        net, decoder, identity=f"{family}|{config_identity(read_json(vae_dir / 'config.json'))}"
    )


def attach_decoder(net: torch.nn.Module, decoder: LatentDecoder, *, identity: str) -> torch.nn.Module:
    """``net`` with ``decode`` (a submodule: its weights join the state dict), the decoded image size and
    ``extra_identity`` (the decoding's identity, hashed into the fingerprint)."""
    net.decode = decoder  # type: ignore[assignment]
    net.image_channels = decoder.image_channels  # type: ignore[assignment]
    net.image_resolution = decoder.image_resolution  # type: ignore[assignment]
    net.extra_identity = hashlib.sha256(identity.encode()).hexdigest()  # type: ignore[assignment]
    return net
