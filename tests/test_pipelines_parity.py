"""Stable Diffusion pipeline folders against diffusers itself: our samplers with the scheduler's own
sigmas reproduce StableDiffusionPipeline's latents (Euler, DPM-Solver++(2M); eps and v; with and
without guidance), Skip-Tuning on UNet2DConditionModel equals an independent hook oracle."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from tiny_pipelines import PROMPTS, load_pipeline, make_pipeline_folder

from skiptune.nets.registry import load_model
from skiptune.sampling import SAMPLERS, Conditioning, bind_conditioning
from skiptune.skips import SkipSchedule, skip_tuning

STEPS = 5


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp(f"sd-{request.param}") / "pipe"
    return make_pipeline_folder(root, prediction_type=request.param)


def start(pipe: object, sampler: str, latents: torch.Tensor) -> torch.Tensor:
    """diffusers' initial sample in EDM's x = x0 + sigma n: Euler works in that x already (it starts at
    ``noise * init_noise_sigma``), DPM-Solver in x_vp = x / sqrt(sigma^2 + 1) (starting at the noise)."""
    scheduler = pipe.scheduler  # type: ignore[attr-defined]
    x = latents.double() * float(scheduler.init_noise_sigma)
    if sampler == "dpmpp_2m":
        x = x * math.sqrt(float(scheduler.sigmas[0]) ** 2 + 1)
    return x


def ours(
    folder: Path,
    sampler: str,
    sigmas: torch.Tensor,
    x: torch.Tensor,
    guidance: float,
    negative: str = "",
) -> torch.Tensor:
    net = load_model(folder).net
    conditioning = Conditioning(tuple(PROMPTS[:2]), negative_prompt=negative, guidance=guidance)
    bound = bind_conditioning(net, conditioning, device="cpu")
    labels = bound.condition_for_seeds([0, 1], device="cpu")  # type: ignore[operator]
    with torch.inference_mode():
        return SAMPLERS.get(sampler).fn(bound, x, sigmas, class_labels=labels).float()


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_sampler_reproduces_stable_diffusion_pipeline(folder: Path, sampler: str, guidance: float) -> None:
    pipe = load_pipeline(folder, sampler)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    theirs = pipe(prompt=PROMPTS[:2], num_inference_steps=STEPS, guidance_scale=guidance,
                  latents=latents.clone(), output_type="latent").images  # fmt: skip
    sigmas = pipe.scheduler.sigmas.double()  # the scheduler's own levels (set by the call), ending at 0
    assert len(sigmas) == STEPS + 1 and float(sigmas[-1]) == 0
    x = start(pipe, sampler, latents)
    mine = ours(folder, sampler, sigmas, x, guidance)
    scale = theirs.abs().max()
    assert scale > 0.1 and torch.isfinite(mine).all()
    # Measured: at most 1e-6 of the largest latent (Euler, guidance 3, v-prediction). diffusers steps in
    # float32, applies guidance to the UNet output and recovers nothing; we step in float64, guide the
    # denoised output (the same affine map) and recover the timestep from the float32 sigma: float32
    # rounding (1e-7 relative) through 5 UNet calls of a random, unnormalised network.
    torch.testing.assert_close(mine, theirs, rtol=0, atol=5e-6 * float(scale))
    # and it is not trivially close: another guidance scale is far away
    other = ours(folder, sampler, sigmas, x, guidance + 2.0)
    assert (other - theirs).abs().max() > 1e-2 * scale


def test_negative_prompt_is_the_unconditional_branch(folder: Path) -> None:
    pipe = load_pipeline(folder, "euler")
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    theirs = pipe(prompt=PROMPTS[:2], negative_prompt=["the sun", "the sun"], num_inference_steps=STEPS,
                  guidance_scale=4.0, latents=latents.clone(), output_type="latent").images  # fmt: skip
    sigmas = pipe.scheduler.sigmas.double()
    mine = ours(folder, "euler", sigmas, start(pipe, "euler", latents), 4.0, negative="the sun")
    torch.testing.assert_close(mine, theirs, rtol=0, atol=5e-6 * float(theirs.abs().max()))
    empty = ours(folder, "euler", sigmas, start(pipe, "euler", latents), 4.0)
    assert (empty - theirs).abs().max() > 1e-2 * theirs.abs().max()


def _oracle_hooks(unet: torch.nn.Module, coefs: list[float]) -> list:
    """Scale the skip channels of each up-block resnet's concatenated input, written from diffusers'
    construction rule (not from the skip tuple): resnet j of an up block takes ``res_skip_channels`` =
    the block's input channels for its last resnet, else its output channels; j counts in forward order."""
    config = unet.config  # type: ignore[union-attr]
    channels = list(reversed(config.block_out_channels))
    handles, k = [], 0
    for b, block in enumerate(unet.up_blocks):  # type: ignore[union-attr]
        out_ch, in_ch = channels[b], channels[min(b + 1, len(channels) - 1)]
        n = len(block.resnets)
        for j, resnet in enumerate(block.resnets):
            skip_ch = in_ch if j == n - 1 else out_ch

            def hook(_m, args, c=coefs[k], s=skip_ch):  # type: ignore[no-untyped-def]
                x = args[0].clone()
                x[:, -s:] *= c
                return (x, *args[1:])

            handles.append(resnet.register_forward_pre_hook(hook))
            k += 1
    assert k == len(coefs)
    return handles


def test_skip_tuning_equals_independent_hook_oracle(folder: Path) -> None:
    net = load_model(folder).net
    bound = bind_conditioning(net, Conditioning(tuple(PROMPTS), guidance=2.5), device="cpu")
    schedule = SkipSchedule(0.6, 1.3)
    k = sum(len(b.resnets) for b in net.unet.up_blocks)  # type: ignore[union-attr]
    coefs = schedule.coefficients(k)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 8, 8, generator=gen) * 2.0
    sigma = torch.tensor([0.5, 2.0, 9.0])
    labels = bound.condition_for_seeds([0, 1, 2], device="cpu")  # type: ignore[operator]
    with torch.inference_mode():
        plain = bound(x, sigma, labels)
        with skip_tuning(bound, schedule):  # type: ignore[arg-type]
            tuned = bound(x, sigma, labels)
        handles = _oracle_hooks(net.unet, coefs)  # type: ignore[arg-type]
        try:
            oracle = bound(x, sigma, labels)
        finally:
            for h in handles:
                h.remove()
        restored = bound(x, sigma, labels)
    assert (tuned - plain).abs().max() > 1e-3  # the coefficients matter
    torch.testing.assert_close(tuned, oracle, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(restored, plain, rtol=0, atol=0)
