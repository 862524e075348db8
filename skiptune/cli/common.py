"""Options and parsers shared by several verbs (one definition, many verbs)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from skiptune.errors import SkiptuneError

STORAGE_ENV = "SKIPTUNE_STORAGE"
DEFAULT_STORAGE = "sqlite:///skiptune.db"


def add_storage(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help=f"SQLAlchemy/Optuna storage URL (default: ${STORAGE_ENV}, else {DEFAULT_STORAGE})",
    )


def add_study_selector(parser: argparse.ArgumentParser) -> None:
    """--model, --nfe, --sampler and --study: which study's answer a query verb reads."""
    from skiptune.sampling.registry import SAMPLERS

    parser.add_argument("--model", required=True, help="model name (as given to `study create`)")
    parser.add_argument("--nfe", required=True, type=int, help="number of function evaluations")
    parser.add_argument(
        "--sampler", default="heun", choices=SAMPLERS.names(), help="sampler (default: %(default)s)"
    )
    parser.add_argument("--study", default=None, metavar="NAME", help="study name, when several match")


def storage_url(args: argparse.Namespace) -> str:
    """The storage URL: --storage, else $SKIPTUNE_STORAGE, else the embedded SQLite file."""
    if args.storage is not None and not args.storage.strip():
        raise SkiptuneError(
            f"empty --storage: expected a database URL, e.g. {DEFAULT_STORAGE} or "
            "postgresql+psycopg://user:password@host:5432/dbname (leave the option out for the default)"
        )
    return args.storage or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def model_help() -> str:
    """``--model``'s help: the registered names (skiptune.plugins.MODELS) or a path."""
    from skiptune.plugins import MODELS

    return (
        f"registered model ({', '.join(MODELS.names()) or 'none'}) or checkpoint path (.pkl/.pt/"
        ".safetensors, a diffusers UNet2DModel folder or a Stable Diffusion 1.x/2.x pipeline folder)"
    )


def extractor_help() -> str:
    """``--extractor``'s help: the registered extractors (skiptune.plugins.EXTRACTORS)."""
    from skiptune.objectives.features import extractor_choices

    return f"one of: {', '.join(extractor_choices())}"


def reference_help() -> str:
    """``--reference``'s help: the registered names (skiptune.plugins.REFERENCES) or a path."""
    from skiptune.plugins import REFERENCES

    return f"registered reference ({', '.join(REFERENCES.names()) or 'none'}) or statistics file (.npz/.pt)"


def source_help() -> str:
    """``--source``'s help: the registered image sources and the file forms."""
    from skiptune.objectives.data import source_usages

    return "|".join(source_usages())


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def parse_int_list(text: str, *, what: str = "value") -> list[int]:
    """Parse ``"5,9,19"``, inclusive ranges ``"0-9999"`` or a mix ``"0-3,8"`` into non-negative ints."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise SkiptuneError(
                f"bad {what} list {text!r}: expected non-negative integers and inclusive ranges "
                "like '5,9,19' or '0-9999'"
            )
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        out.extend(range(lo, hi + 1))
    return out


def parse_float_pair(values: list[str], *, what: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in values)
    except ValueError:
        raise SkiptuneError(f"bad {what} {' '.join(values)!r}: expected two numbers, e.g. 0.7 1.0") from None
    return lo, hi


def add_validation_options(parser: argparse.ArgumentParser) -> None:
    """Options of the held-out validation stage (``study create``, ``validate``)."""
    group = parser.add_argument_group("validation (held-out seeds)")
    group.add_argument(
        "--validate-top-k",
        type=int,
        default=3,
        metavar="K",
        help="distinct candidates re-evaluated on held-out seeds (default: %(default)s)",
    )
    group.add_argument(
        "--validate-samples",
        type=int,
        default=None,
        metavar="N",
        help="held-out samples per candidate (default: 2x --n-samples)",
    )
    group.add_argument(
        "--validate-blocks",
        type=int,
        default=10,
        metavar="B",
        help="blocks of held-out seeds for the jackknife standard error (default: %(default)s)",
    )
    group.add_argument(
        "--validate-seed-base",
        type=int,
        default=None,
        metavar="S",
        help="first held-out seed (default: the search's seed base + 1,000,000,000)",
    )
    group.add_argument(
        "--gain-threshold",
        type=float,
        default=2.0,
        metavar="Z",
        help="standard errors a gain must exceed to be recommended, as a normal's: compared through the "
        "Student-t quantile for --validate-blocks - 1 degrees of freedom (2 -> 2.32 for 10 blocks) "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--growth-trials",
        type=int,
        default=None,
        metavar="T",
        help="extra trials for growing the box towards an edge optimum, all growths "
        "together; 0: fixed box (default: a third of --trials)",
    )
    group.add_argument(
        "--growth-edge",
        type=float,
        default=0.05,
        metavar="F",
        help="the box grows on a side when the validated best lies within F x its width of it "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--refine-trials",
        type=int,
        default=None,
        metavar="T",
        help="after validation, search T more trials in a small box around the answer (around (1, 1) "
        "for no-gain) and validate again; 0: off (default: half of --trials)",
    )
    group.add_argument(
        "--refine-radius",
        type=float,
        default=0.1,
        metavar="F",
        help="the refinement box's half-width, a fraction of the search box's width (default: %(default)s)",
    )
    group.add_argument(
        "--refine-shape",
        choices=("landscape", "square"),
        default="landscape",
        help="landscape: the refinement box keeps the square's area, longer along the coefficient the "
        "study's trials vary least with (their fitted length scales); square: equal sides "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--window-trials",
        type=int,
        default=None,
        metavar="W",
        help="window stage: sigma windows of a validated pair screened on the search seeds, at most W "
        f"(default: {_default_window_trials()})",
    )
    group.add_argument(
        "--window-candidates",
        type=int,
        default=2,
        metavar="K",
        help="window stage: the K best screened windows validated on held-out seeds (default: %(default)s)",
    )
    group.add_argument(
        "--no-window", action="store_true", help="no window stage: the answer applies at every sigma"
    )
    group.add_argument(
        "--no-validate", action="store_true", help="no validation: the answer stays the search best"
    )


def _default_window_trials() -> int:
    from skiptune.search.settings import DEFAULT_WINDOW_TRIALS

    return DEFAULT_WINDOW_TRIALS


def validation_settings(args: argparse.Namespace, *, n_trials: int) -> Any:  # -> ValidationSettings
    from skiptune.search.settings import ValidationSettings

    return ValidationSettings.default_for(
        search_samples=args.n_samples,
        search_seed_base=args.seed_base,
        n_trials=n_trials,
        n_samples=args.validate_samples,
        seed_base=args.validate_seed_base,
        top_k=args.validate_top_k,
        blocks=args.validate_blocks,
        threshold=args.gain_threshold,
        growth_budget=args.growth_trials,
        edge=args.growth_edge,
        refine_trials=args.refine_trials,
        refine_radius=args.refine_radius,
        refine_shape=args.refine_shape,
        window_trials=0 if args.no_window else args.window_trials,
        window_candidates=args.window_candidates,
    )


def add_conditioning_options(
    parser: argparse.ArgumentParser, *, default_guidance: float | None = 1.0
) -> None:
    """``--prompts``, ``--negative-prompt``, ``--guidance``: the conditions of text-conditional models."""
    parser.add_argument(
        "--prompts", type=Path, default=None, metavar="FILE",
        help="text models: prompts, one per line; sample i gets prompt (seed mod P)",
    )  # fmt: skip
    parser.add_argument(
        "--negative-prompt", default="", metavar="TEXT",
        help="text models: the unconditional branch's prompt under guidance (default: empty)",
    )  # fmt: skip
    shown = "" if default_guidance is None else " (default: %(default)s)"
    parser.add_argument(
        "--guidance", type=float, default=default_guidance, metavar="W",
        help="text models: classifier-free guidance scale, 1 = none; one guided evaluation counts as one NFE "
        f"at twice the batch{shown}",
    )  # fmt: skip


def conditioning_from_args(args: argparse.Namespace) -> Any:  # -> Conditioning | None
    """The conditioning the options describe; None without ``--prompts`` (then the others are refused)."""
    from skiptune.sampling.conditions import Conditioning, read_prompts

    guidance = 1.0 if args.guidance is None else float(args.guidance)
    if args.prompts is None:
        if guidance != 1.0 or args.negative_prompt:
            raise SkiptuneError(
                "--guidance/--negative-prompt need --prompts FILE (the prompts of a text-conditional model)"
            )
        return None
    return Conditioning(read_prompts(args.prompts), args.negative_prompt, guidance)
