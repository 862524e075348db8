"""Prompts of the latent demo and the tiny CLIP tokenizer over their words.

Fashion-MNIST's ten classes, each said in a few templates ("a photo of a sneaker"). The tokenizer is a
real ``transformers.CLIPTokenizer`` (byte-level BPE, CLIP's pre-tokenizer, ``<|startoftext|>`` /
``<|endoftext|>``) whose vocabulary is the letters plus every word of these prompts, with merges that
make each word one token; so a pipeline folder holds the standard ``tokenizer/`` files and any
diffusers-compatible loader reads it. Unknown words still tokenize (into letters), the model has just
never seen them.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

# Fashion-MNIST label order (0..9), as the prompts say them.
CLASS_NAMES: tuple[str, ...] = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",
    "a picture of a {}",
    "an image of a {}",
    "a {}",
    "{}",
)
EVAL_TEMPLATE = TEMPLATES[0]  # the one prompt per class the evaluation uses
UNCONDITIONAL = ""  # the prompt dropped-out training examples get; diffusers' default negative prompt
MAX_LENGTH = 16  # tokens with <|startoftext|> and <|endoftext|>; the longest prompt needs 8
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_SUFFIX = "</w>"


def class_prompt(label: int, template: str = EVAL_TEMPLATE) -> str:
    """The prompt for Fashion-MNIST class ``label`` in ``template``."""
    return template.format(CLASS_NAMES[label])


def training_prompts() -> list[tuple[str, int]]:
    """Every (prompt, label) the denoiser trains on: each class in each template."""
    return [(t.format(name), label) for label, name in enumerate(CLASS_NAMES) for t in TEMPLATES]


def prompt_words() -> list[str]:
    """The words of all prompts as CLIP's pre-tokenizer splits them (letters runs and punctuation)."""
    words: list[str] = []
    for text in [t.format(n) for n in CLASS_NAMES for t in TEMPLATES]:
        for word in text.replace("-", " - ").split():
            if word not in words:
                words.append(word)
    return words


def _vocabulary_base() -> dict[str, int]:
    vocab = {BOS: 0, EOS: 1}
    for ch in string.ascii_lowercase + string.digits + "-":
        for piece in (ch, ch + _SUFFIX):
            vocab.setdefault(piece, len(vocab))
    return vocab


def _pieces(tokenizer: CLIPTokenizer, word: str) -> list[str]:
    return [str(t) for t in tokenizer.tokenize(word)]


def build_tokenizer(*, max_length: int = MAX_LENGTH) -> CLIPTokenizer:
    """The demo's CLIPTokenizer: every prompt word one token, padded with ``<|endoftext|>`` (as SD 1.x)."""
    from transformers import CLIPTokenizer

    vocab = _vocabulary_base()
    merges: list[tuple[str, str]] = []  # pairs: the tokenizers backend refuses "a b" strings here
    for word in prompt_words():
        # Merges are ranked: appended ones act only after the earlier words' merges are exhausted, so
        # joining the word's current pieces left to right never changes an earlier word's tokens.
        pieces = _pieces(CLIPTokenizer(vocab=vocab, merges=merges), word)  # type: ignore[arg-type]
        joined = pieces[0]
        for piece in pieces[1:]:
            merges.append((joined, piece))
            joined += piece
            vocab.setdefault(joined, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)  # type: ignore[arg-type]


def write_vocab_files(folder: str | Path) -> None:
    """Add ``vocab.json`` and ``merges.txt`` beside a saved ``tokenizer.json`` (what SD 1.x folders hold).

    transformers 5 saves only ``tokenizer.json``; loaders built on the older slow ``CLIPTokenizer`` read
    these two files, so the demo's folder carries both forms of the same vocabulary.
    """
    folder = Path(folder)
    model = json.loads((folder / "tokenizer.json").read_text())["model"]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False) + "\n")
    lines = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{m}\n" for m in lines))
