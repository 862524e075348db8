"""``skiptune study create|list``: one Optuna study per NFE, and an overview of the stored studies."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from skiptune.cli.common import (
    add_conditioning_options,
    add_json,
    add_storage,
    add_validation_options,
    conditioning_from_args,
    extractor_help,
    model_help,
    parse_float_pair,
    parse_int_list,
    print_json,
    reference_help,
    storage_url,
    validation_settings,
)
from skiptune.errors import SkiptuneError
from skiptune.sampling import SAMPLERS
from skiptune.search.algorithms import SEARCH_ALGORITHMS
from skiptune.search.space import DEFAULT_RHO_RANGE, SearchSpace
from skiptune.storage import open_storage
from skiptune.storage.url import normalize_url

HELP = "create studies (one per NFE) or list them"
DESCRIPTION = """Create one study per NFE for a model, sampler and objective. The trial budget
(--trials) is shared by all workers; the baseline (1, 1) is always trial 0, and the best pairs of
the nearest NFEs already searched are enqueued as warm starts. Creating again is harmless (same
identity -> same study; the budget takes the new value).

When the budget is spent the answer is validated: the top --validate-top-k distinct pairs and the
baseline are re-evaluated on held-out seeds no trial used, and the best is recommended only if its gain
over the baseline exceeds --gain-threshold standard errors (else (1, 1), status no-gain). If the
validated best presses against a side of the box, the box grows on that side and up to --growth-trials
more trials search there, then validate again. Then --refine-trials more trials search a small box around
the answer (around (1, 1) for no-gain), validated the same way. Last, the window stage: the validated pair
inside sigma windows made of the sampler's own noise levels (at most --window-trials, screened on the
search seeds; the --window-candidates best validated on the held-out seeds); a window is the answer only
if it beats the full-range pair there by the same rule (--no-window: off).

The search box defaults to [0.2, 1.2] for both coefficients: the paper's tuned values (0.6-1.0) and the
demo model's optima (0.3-1.15) lie inside it, and (1, 1) stays an interior point; it grows when needed.

examples:
  skiptune study create --model demo --nfe 5,9,19 --extractor fmnist-classifier \\
      --reference refs/fmnist-train.npz --n-samples 10000 --rungs 2000,10000 --trials 30
  skiptune study create --model edm-cifar10 --sampler heun --nfe 9 --extractor inception-v3 \\
      --reference cifar10-32x32.npz --search gp --storage postgresql://user:pw@db/skiptune
  skiptune study create --model ./stable-diffusion-v1-5 --prompts prompts.txt --guidance 7.5 \\
      --sampler dpmpp_2m --nfe 10,20 --extractor inception-v3-compat --reference coco-512.npz --n-samples 5000
  skiptune study list --model demo

Text-conditional models (Stable Diffusion pipeline folders) need --prompts: sample i is conditioned on
prompt (seed mod P). The prompts, negative prompt and guidance scale are part of the study's identity.
One guided evaluation (conditional and unconditional halves in one batch of twice the size) is one NFE.
--clip-guard PATH (a local CLIP folder) adds the prompt-alignment guard to their validation: a pair whose
mean CLIP score on the held-out samples drops below the baseline's by more than the threshold's standard
errors is not recommended.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = sub.add_parser(
        "create",
        help="create studies, one per NFE",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    create.add_argument("--model", required=True, help=model_help())
    create.add_argument(
        "--sampler", default="heun", choices=SAMPLERS.names(), help="sampler (default: %(default)s)"
    )
    create.add_argument("--nfe", required=True, help="NFE list, e.g. 5,9,19")
    create.add_argument("--extractor", required=True, help=extractor_help())
    create.add_argument("--reference", required=True, metavar="PATH", help=reference_help())
    create.add_argument(
        "--n-samples", type=int, default=10000, help="samples per full evaluation (default: %(default)s)"
    )
    create.add_argument(
        "--rungs",
        default=None,
        help="sample counts at which a trial may be pruned, ending at --n-samples (default: N/5,N; N alone "
        "when N/5 < 2)",
    )
    create.add_argument(
        "--seed-base", type=int, default=0, help="sample i uses seed seed_base + i (default: %(default)s)"
    )
    create.add_argument(
        "--trials",
        type=int,
        default=30,
        help="trial budget per study, all workers together (default: %(default)s)",
    )
    create.add_argument(
        "--seed",
        type=int,
        default=None,
        help="the search's seed, recorded with the study; workers seed their samplers from it and their "
        "own --seed (default: the study's recorded seed, or a random one for a new study)",
    )
    create.add_argument(
        "--search",
        default="tpe",
        choices=SEARCH_ALGORITHMS.names(),
        help="search algorithm (default: %(default)s)",
    )
    create.add_argument(
        "--rho-bottom-range",
        nargs=2,
        default=[str(v) for v in DEFAULT_RHO_RANGE],
        metavar=("LO", "HI"),
        help="rho_bottom search range (default: %(default)s)",
    )
    create.add_argument(
        "--rho-top-range",
        nargs=2,
        default=[str(v) for v in DEFAULT_RHO_RANGE],
        metavar=("LO", "HI"),
        help="rho_top search range (default: %(default)s)",
    )
    create.add_argument(
        "--sigma-window-range",
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="also search a sigma window [lo, hi] inside this range (log scale); default: off",
    )
    add_conditioning_options(create)
    create.add_argument(
        "--clip-guard", type=Path, default=None, metavar="PATH",
        help="text models: a local CLIP model folder; validation also scores each held-out sample's CLIP "
        "alignment with its prompt and never recommends a pair whose mean CLIP score drops significantly",
    )  # fmt: skip
    add_validation_options(create)
    add_storage(create)
    add_json(create)
    listing = sub.add_parser("list", help="list studies with their progress")
    listing.add_argument("--model", default=None, help="only this model")
    add_storage(listing)
    add_json(listing)


def run(args: argparse.Namespace) -> int:
    return _create(args) if args.action == "create" else _list(args)


def _rungs(args: argparse.Namespace) -> list[int]:
    if args.n_samples < 1:
        raise SkiptuneError(f"bad --n-samples {args.n_samples}: expected a positive integer, e.g. 10000")
    from skiptune.objectives.spec import check_rungs, default_rungs

    if args.rungs is None:
        return list(default_rungs(args.n_samples))
    # checked here too (the objective spec does it again) to fail before the model is loaded
    return list(check_rungs(parse_int_list(args.rungs, what="rung"), args.n_samples))


def _create(args: argparse.Namespace) -> int:
    from skiptune.nets.registry import load_model
    from skiptune.search.study import create_studies
    from skiptune.search.worker.objective import study_specs

    space = SearchSpace(
        rho_bottom=parse_float_pair(args.rho_bottom_range, what="--rho-bottom-range"),
        rho_top=parse_float_pair(args.rho_top_range, what="--rho-top-range"),
        sigma_window=(
            parse_float_pair(args.sigma_window_range, what="--sigma-window-range")
            if args.sigma_window_range
            else None
        ),
    )
    url = normalize_url(storage_url(args))  # fail fast on a bad URL, before loading anything
    conditioning = conditioning_from_args(args)  # a bad prompts file too
    if args.clip_guard is not None and (conditioning is None or args.no_validate):
        raise SkiptuneError(
            "--clip-guard needs a text-to-image study (a pipeline folder with --prompts FILE): it compares "
            "each image with its prompt during validation" if conditioning is None else
            "--clip-guard acts in validation; drop --no-validate"
        )  # fmt: skip
    loaded = load_model(args.model, device="cpu")
    specs = study_specs(
        loaded,
        sampler=args.sampler,
        nfes=parse_int_list(args.nfe, what="NFE"),
        extractor=args.extractor,
        reference_path=Path(args.reference),
        n_samples=args.n_samples,
        rungs=_rungs(args),
        seed_base=args.seed_base,
        space=space,
        n_trials=args.trials,
        search=args.search,
        conditioning=conditioning,
    )
    specs = [replace(s, seed=args.seed) for s in specs]  # validates the seed
    validation = None if args.no_validate else validation_settings(args, n_trials=args.trials)
    if validation is not None:
        validation.check_disjoint(args.seed_base, args.n_samples)
    if validation is not None and args.clip_guard is not None:
        from skiptune.objectives.clip_score import load_clip_scorer

        scorer = load_clip_scorer(args.clip_guard)  # a bad folder is one line, before any study is written
        guard = str(args.clip_guard.resolve())
        validation = replace(validation, clip_guard=guard, clip_sha256=scorer.identity)
    storage = open_storage(url)  # after every check: a refused command leaves no database file behind
    results = create_studies(storage, [replace(s, validation=validation) for s in specs])
    if args.json:
        print_json([vars(r) for r in results])
        return 0
    for r in results:
        state = "created" if r.created else "exists "
        extra = f", enqueued {len(r.enqueued)}" if r.enqueued else ""
        print(f"{state} {r.name}  (budget {r.n_trials}, seed {r.seed}{extra})")
    return 0


def _list(args: argparse.Namespace) -> int:
    from skiptune.search.query import summary_rows

    rows = summary_rows(open_storage(storage_url(args), read_only=True), args.model)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no studies" + (f" for model {args.model!r}" if args.model else ""))
        return 0
    for r in rows:
        best = "-" if r["value"] is None else f"{r['value']:.4f}"
        print(
            f"{r['study']}  {r['n_trials']}/{r['budget']} trials ({r['n_complete']} complete, "
            f"{r['n_pruned']} pruned, {r['n_running']} running, {r['n_waiting']} waiting, "
            f"{r['n_failed']} failed)  best {best}  search {r['search']}"
        )
    return 0
