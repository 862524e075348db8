"""The latent text-conditional demo (``demo-latent``): a diffusers Stable-Diffusion-style pipeline folder.

    prompts.py      class-name prompts and the tiny CLIP tokenizer over their words
    components.py   sizes (LatentDemoConfig) -> AutoencoderKL, CLIPTextModel, UNet2DConditionModel,
                    DDIM scheduler; the pipeline folder (save / check)
    vae.py          the VAE's training (reconstruction + small KL) and the dataset's latents
    vp_loss.py      the discrete VP (DDPM) epsilon-prediction loss on the scheduler's alphas_cumprod
    denoiser.py     the UNet and text encoder, trained jointly, with prompt dropout for guidance
    evaluate.py     diffusers' own pipeline -> samples by prompt -> classifier accuracy and FD
    __main__.py     ``python -m skiptune.demo.training.latent``: all of it, one JSON log

Needs the ``[diffusers]`` extra (diffusers, transformers, safetensors).
"""
