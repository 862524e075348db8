"""CLIP score per sample: how well an image matches its prompt (the prompt-alignment guard's measure).

``score = 100 * max(cos(E_image, E_text), 0)`` (Hessel et al. 2021, CLIPScore with w = 100, as torchmetrics'
``CLIPScore`` and papers report it), with a CLIP model loaded from a local folder (transformers'
``save_pretrained`` layout: ``config.json``, safetensors weights, the CLIP tokenizer's files and
``preprocessor_config.json``). Nothing is downloaded, and pickled ``.bin`` weights are refused.
Images are preprocessed by the folder's own ``CLIPImageProcessor`` (resize of the shorter side and centre
crop to the model's input size, CLIP mean/std); prompts are truncated to the tokenizer's length.
``identity`` (sha256 over the weights and those files) lets every worker check it scores with the same model.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from skiptune.errors import SkiptuneError
from skiptune.nets.pipelines.folder import load_state, read_json, read_safetensors
from skiptune.nets.registry import fingerprint

#: The folder's files besides the weights that change a score (those present are hashed into ``identity``).
_FILES = ("config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json",
          "merges.txt", "special_tokens_map.json", "added_tokens.json")  # fmt: skip


class ClipScorer:
    """``scores(images, prompts) -> float64 [N]``: the CLIP score of each uint8 ``[N, 3, H, W]`` image with
    its prompt."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, processor: Any, *, identity: str) -> None:
        self.model, self.tokenizer, self.processor = model.eval(), tokenizer, processor
        self.identity = identity

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def scores(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3 or len(prompts) != images.shape[0]:
            raise SkiptuneError(
                f"the CLIP score needs RGB images [N, 3, H, W] and one prompt each; got images "
                f"{list(images.shape)} and {len(prompts)} prompts"
            )
        pixels = self.processor(images=list(images.cpu()), return_tensors="pt")["pixel_values"]
        tokens = self.tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            out = self.model(
                input_ids=tokens["input_ids"].to(self.device),
                attention_mask=tokens["attention_mask"].to(self.device),
                pixel_values=pixels.to(self.device),
            )
        image, text = out.image_embeds.double(), out.text_embeds.double()
        cos = (image * text).sum(-1) / (image.norm(dim=-1) * text.norm(dim=-1))
        return (100 * cos.clamp(min=0)).cpu()


def load_clip_scorer(path: str | Path, *, device: torch.device | str = "cpu") -> ClipScorer:
    """The CLIP model, tokenizer and image processor of a local folder; one line for what is amiss."""
    root = Path(path)
    if not root.is_dir():
        raise SkiptuneError(
            f"no CLIP model folder {str(root)!r}; --clip-guard takes a local folder that transformers' "
            "CLIPModel.save_pretrained wrote (e.g. a download of openai/clip-vit-large-patch14)"
        )
    try:
        import transformers
    except ImportError:
        raise SkiptuneError("the CLIP guard needs: pip install 'skiptune[diffusers]'") from None
    config = read_json(root / "config.json")
    if config.get("model_type") != "clip":
        raise SkiptuneError(
            f"{root / 'config.json'}: model_type {config.get('model_type')!r}, expected clip (a CLIPModel "
            "with its text and vision towers)"
        )
    model: torch.nn.Module = transformers.CLIPModel(transformers.CLIPConfig.from_dict(config))
    load_state(model, read_safetensors(root, "model"), source=root, ignore_unexpected=("position_ids",))
    try:  # the CLIP classes themselves, never Auto* (which may import code named by the files)
        tokenizer = transformers.CLIPTokenizer.from_pretrained(str(root), local_files_only=True)
        processor = transformers.CLIPImageProcessor.from_pretrained(str(root), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise SkiptuneError(
            f"{root}: cannot read the CLIP tokenizer or preprocessor_config.json ({exc}); the folder needs "
            "both (save_pretrained of CLIPProcessor writes them)"
        ) from None
    digest = hashlib.sha256(f"weights {fingerprint(model)}\n".encode())
    for name in _FILES:
        if (root / name).is_file():
            digest.update(f"file {name}\n".encode() + (root / name).read_bytes())
    model.to(device)
    return ClipScorer(model, tokenizer, processor, identity=digest.hexdigest())


@functools.lru_cache(maxsize=2)
def cached_clip_scorer(path: str, expected: str | None, device: str) -> ClipScorer:
    """One scorer per (folder, device) a worker process scores with, refused unless its identity is
    ``expected`` (the one the study was created with)."""
    if not Path(path).is_dir():
        raise SkiptuneError(
            f"the study's CLIP guard folder {path!r} is not on this machine; copy the CLIP folder the study "
            "was created with to that path, or run this worker where it is"
        )
    scorer = load_clip_scorer(path, device=device)
    if expected is not None and scorer.identity != expected:
        raise SkiptuneError(
            f"CLIP folder {path!r} here has identity {scorer.identity[:12]}..., the study's CLIP guard was "
            f"created with {expected[:12]}...; copy the study's CLIP folder to that path"
        )
    return scorer
