"""Sampling: denoiser contract, EDM sigma schedule, samplers by name, per-sample seeded noise, uint8.

A sampler is one function in :mod:`skiptune.sampling.samplers`, registered there with its settings
and NFE rule by ``@register_sampler`` (see :mod:`skiptune.sampling.registry`).

    sigmas = edm_sigmas(net, steps, device=dev)            # float64 [steps + 1], cached
    x0 = SAMPLERS.get("heun").fn(net, x, sigmas)           # one signature for every sampler
    for batch in generate_images(net, sampler="heun", nfe=35, seeds=range(1000),
                                 batch_size=64, device=dev):  # uint8 [n, C, H, W]
        ...

Sample ``i`` is a pure function of its seed (common random numbers across trials, batch sizes,
workers and devices): see :mod:`skiptune.sampling.noise`.
"""

from __future__ import annotations

from skiptune.sampling.conditions import Conditioning, GuidedDenoiser, bind_conditioning, read_prompts
from skiptune.sampling.contract import (
    Denoiser,
    DenoiserLike,
    NoiseFn,
    SamplerBody,
    SamplerFn,
    as_denoiser,
    denoise,
    round_sigma,
)
from skiptune.sampling.generate import decode, generate_images, image_shape, sample_batch, to_uint8
from skiptune.sampling.nfe import NFERule
from skiptune.sampling.noise import PerSampleGenerator
from skiptune.sampling.registry import SAMPLERS, SamplerSpec, register_sampler
from skiptune.sampling.samplers import DPMSolverSettings, EulerSettings, HeunSettings, dpmpp_2m, euler, heun
from skiptune.sampling.schedule import EDMSchedule, edm_sigmas
from skiptune.sampling.settings import ChurnSettings, NoSettings, SamplerSettings

__all__ = [
    "SAMPLERS",
    "ChurnSettings",
    "Conditioning",
    "DPMSolverSettings",
    "Denoiser",
    "DenoiserLike",
    "EDMSchedule",
    "EulerSettings",
    "GuidedDenoiser",
    "HeunSettings",
    "NFERule",
    "NoSettings",
    "NoiseFn",
    "PerSampleGenerator",
    "SamplerBody",
    "SamplerFn",
    "SamplerSettings",
    "SamplerSpec",
    "as_denoiser",
    "bind_conditioning",
    "decode",
    "denoise",
    "dpmpp_2m",
    "edm_sigmas",
    "euler",
    "generate_images",
    "heun",
    "image_shape",
    "read_prompts",
    "register_sampler",
    "round_sigma",
    "sample_batch",
    "to_uint8",
]
