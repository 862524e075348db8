"""Latent and text-conditional pipelines (Stable Diffusion folders, EDM2 latents) as EDM-style denoisers."""
