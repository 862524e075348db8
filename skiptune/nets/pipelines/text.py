"""The text side of a Stable Diffusion folder: CLIP tokenizer + CLIPTextModel, prompts -> embeddings.

Prompts are encoded as diffusers' ``StableDiffusionPipeline.encode_prompt`` does without clip-skip:
padded to the tokenizer's ``model_max_length``, truncated, the text model's last hidden state (the
attention mask only where the text encoder's config asks for it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from skiptune.errors import SkiptuneError
from skiptune.nets.pipelines.folder import load_state, read_json, read_safetensors

_BATCH = 64  # prompts per text-encoder call


class TextEncoder(torch.nn.Module):
    """``encode(prompts) -> float32 [P, L, D]`` with a CLIP tokenizer and text model."""

    def __init__(self, tokenizer: Any, model: torch.nn.Module) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.model = model
        config: Any = model.config
        self.hidden_size = int(config.hidden_size)
        self.use_attention_mask = bool(getattr(config, "use_attention_mask", False))

    @property
    def max_length(self) -> int:
        return int(self.tokenizer.model_max_length)

    def encode(self, prompts: Sequence[str], *, device: torch.device | str) -> torch.Tensor:
        """Embeddings of ``prompts`` on ``device`` (float32), in order."""
        out = []
        for start in range(0, len(prompts), _BATCH):
            chunk = list(prompts[start : start + _BATCH])
            tokens = self.tokenizer(chunk, padding="max_length", max_length=self.max_length,
                                    truncation=True, return_tensors="pt")  # fmt: skip
            mask = tokens.attention_mask.to(device) if self.use_attention_mask else None
            with torch.inference_mode():
                hidden = self.model(tokens.input_ids.to(device), attention_mask=mask)[0]
            out.append(hidden.float())
        return torch.cat(out)


def load_text_encoder(root: Path) -> tuple[TextEncoder, dict[str, Any]]:
    """The folder's tokenizer and text encoder (safetensors weights) and the encoder's config."""
    try:
        import transformers
    except ImportError:
        raise SkiptuneError("text-conditional models need: pip install 'skiptune[diffusers]'") from None
    config = read_json(root / "text_encoder" / "config.json")
    if config.get("model_type", "clip_text_model") != "clip_text_model":
        raise SkiptuneError(
            f"{root / 'text_encoder' / 'config.json'}: model_type {config.get('model_type')!r}, expected "
            "clip_text_model (CLIPTextModel)"
        )
    model = transformers.CLIPTextModel(transformers.CLIPTextConfig.from_dict(config))
    load_state(model, read_safetensors(root / "text_encoder", "model"), source=root / "text_encoder",
               ignore_unexpected=("position_ids",))  # fmt: skip
    tokenizer_dir = root / "tokenizer"
    if not tokenizer_dir.is_dir():
        raise SkiptuneError(f"missing {tokenizer_dir}; a Stable Diffusion folder needs its CLIP tokenizer")
    try:  # the CLIP class itself, never Auto* (which may import code named by the files)
        tokenizer = transformers.CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise SkiptuneError(
            f"{tokenizer_dir}: cannot read the CLIP tokenizer ({exc}); re-download it"
        ) from None
    return TextEncoder(tokenizer, model.eval()), config
