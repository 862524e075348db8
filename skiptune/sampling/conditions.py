"""Text conditions and classifier-free guidance over any text-conditional denoiser.

A :class:`Conditioning` is the prompts (one per line of a file), an optional negative prompt and the
guidance scale w (diffusers' ``guidance_scale``: 1 = no guidance). It is part of the objective's
identity. :func:`bind_conditioning` turns a text-conditional net (one with ``encode_text``) into a
:class:`GuidedDenoiser`: the prompts are encoded once, sample ``i`` is conditioned on prompt
``seed_i mod P`` (a function of its seed alone, so common random numbers hold per (seed, prompt)),
and with ``w > 1`` every evaluation runs the net once on the conditional and unconditional halves of a
doubled batch and returns ``D_u + w (D_c - D_u)``: one guided evaluation is one NFE, at twice the batch.
(Guidance on the denoised output equals diffusers' guidance on the noise or v prediction: D is affine
in the network output with the same coefficients for both halves.)
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from skiptune.errors import SkiptuneError
from skiptune.sampling.contract import CONTRACT_ATTRIBUTES, DenoiserLike, as_denoiser

# What a wrapper passes on from the net it wraps, besides the contract (decoding latents, image size).
PASSED_ON = ("decode", "image_resolution", "image_channels", "extra_identity")


@dataclass(frozen=True)
class Conditioning:
    """Prompts, negative prompt and guidance scale: everything about the condition that changes samples."""

    prompts: tuple[str, ...]
    negative_prompt: str = ""
    guidance: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompts", tuple(str(p) for p in self.prompts))
        object.__setattr__(self, "guidance", float(self.guidance))
        if not self.prompts:
            raise SkiptuneError(
                "no prompts given: expected at least one prompt, one per line of --prompts FILE"
            )
        if not math.isfinite(self.guidance) or self.guidance < 1:
            raise SkiptuneError(
                f"bad --guidance {self.guidance}: expected a scale >= 1 (1 = no guidance; Stable Diffusion "
                "is usually sampled at 5-8); below 1 moves samples away from their prompts"
            )
        if self.negative_prompt and self.guidance == 1:
            raise SkiptuneError(
                "--negative-prompt needs --guidance > 1: without guidance the unconditional branch never runs"
            )

    @property
    def prompts_sha256(self) -> str:
        return hashlib.sha256(json.dumps(list(self.prompts)).encode()).hexdigest()

    def identity(self) -> dict[str, str]:
        """What the objective's identity adds (strings, as all of it)."""
        return {
            "prompts_sha256": self.prompts_sha256,
            "n_prompts": str(len(self.prompts)),
            "negative_prompt": self.negative_prompt,
            "guidance": repr(self.guidance),
        }

    def to_dict(self) -> dict[str, Any]:
        """Stored with the study, so a worker needs no prompts file of its own."""
        return {
            "prompts": list(self.prompts),
            "negative_prompt": self.negative_prompt,
            "guidance": self.guidance,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Conditioning:
        return cls(
            tuple(data["prompts"]), str(data.get("negative_prompt", "")), float(data.get("guidance", 1.0))
        )


def read_prompts(path: str | Path) -> tuple[str, ...]:
    """Prompts of a UTF-8 text file, one per line (surrounding whitespace and blank lines dropped)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SkiptuneError(f"cannot read prompts file {path} ({exc.strerror}); check the path") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text:
        raise SkiptuneError(f"prompts file {path} is not UTF-8 text; expected one prompt per line")
    prompts = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not prompts:
        raise SkiptuneError(f"prompts file {path} has no prompt; expected one prompt per line")
    return prompts


def is_text_conditional(net: object) -> bool:
    """Whether ``net`` takes text conditions (has ``encode_text``)."""
    return callable(getattr(net, "encode_text", None))


class GuidedDenoiser(torch.nn.Module):
    """A text-conditional denoiser bound to prompts, with classifier-free guidance (see module doc)."""

    supports_sigma_window = False

    def __init__(
        self, denoiser: torch.nn.Module, conditioning: Conditioning, *, device: torch.device | str
    ) -> None:
        super().__init__()
        as_denoiser(denoiser)
        self.denoiser = denoiser
        self.conditioning = conditioning
        for name in CONTRACT_ATTRIBUTES + PASSED_ON:
            if hasattr(denoiser, name):
                setattr(self, name, getattr(denoiser, name))
        encode: Any = denoiser.encode_text
        self.embeddings: torch.Tensor
        self.negative: torch.Tensor
        self.register_buffer("embeddings", encode(conditioning.prompts, device=device), persistent=False)
        self.register_buffer(
            "negative", encode([conditioning.negative_prompt], device=device), persistent=False
        )
        self.guidance = conditioning.guidance

    def condition_for_seeds(self, seeds: Sequence[int], *, device: torch.device | str) -> torch.Tensor:
        """The condition of each sample: prompt ``seed mod P``'s hidden states, ``[len(seeds), L, D]``."""
        index = torch.tensor(
            [int(s) % self.embeddings.shape[0] for s in seeds], device=self.embeddings.device
        )
        return self.embeddings[index].to(device)

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None = None, **_: Any
    ) -> torch.Tensor:
        if class_labels is None:
            raise SkiptuneError("a prompt-bound denoiser needs each sample's condition (condition_for_seeds)")
        if self.guidance == 1:
            return self.denoiser(x, sigma, class_labels)  # type: ignore[no-any-return]
        n = x.shape[0]
        sig = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(n)
        uncond = self.negative.to(class_labels.device).expand(n, *class_labels.shape[1:])
        out = self.denoiser(torch.cat([x, x]), torch.cat([sig, sig]), torch.cat([uncond, class_labels]))
        d_uncond, d_cond = out.chunk(2)
        return d_uncond + self.guidance * (d_cond - d_uncond)


def bind_conditioning(
    net: DenoiserLike, conditioning: Conditioning | None, *, device: torch.device | str
) -> DenoiserLike:
    """``net`` bound to ``conditioning`` (text-conditional nets), or ``net`` itself (no conditioning).

    A text-conditional net needs prompts; any other net refuses them (and guidance), one line each.
    """
    check_conditioning(net, conditioning)
    if conditioning is None:
        return net
    return GuidedDenoiser(net, conditioning, device=device)  # type: ignore[arg-type]


def check_conditioning(net: object, conditioning: Conditioning | None) -> None:
    """The refusals of :func:`bind_conditioning`, without encoding anything."""
    text = is_text_conditional(net)
    if text and conditioning is None:
        raise SkiptuneError(
            f"{type(net).__name__} is text-conditional: pass --prompts FILE (one prompt per line) and "
            "usually --guidance, e.g. --guidance 7.5"
        )
    if not text and conditioning is not None:
        raise SkiptuneError(
            f"{type(net).__name__} takes no text: drop --prompts/--guidance/--negative-prompt "
            "(classifier-free guidance needs a text-conditional pipeline folder; class-conditional nets "
            "take --class)"
        )
