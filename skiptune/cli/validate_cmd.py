"""``skiptune validate``: validate a study's answer on held-out seeds now (workers evaluate the jobs)."""

from __future__ import annotations

import argparse

from skiptune.cli.common import (
    add_json,
    add_storage,
    add_study_selector,
    add_validation_options,
    print_json,
    storage_url,
    validation_settings,
)
from skiptune.errors import SkiptuneError
from skiptune.storage import open_storage
from skiptune.storage.open import require_existing_sqlite
from skiptune.storage.url import normalize_url

HELP = "validate a study's best pairs on held-out seeds (jobs for the workers)"
DESCRIPTION = """Enqueue a validation round for one study now, whether or not its search budget is spent:
its top --validate-top-k distinct pairs and the baseline (1, 1), each on the same held-out seeds that no
search trial used. Any worker attached to the model evaluates the jobs; `skiptune best` then shows the
status (validating, then validated or no-gain) and the held-out gain +- its standard error.

Studies created with validation on do this by themselves when their budget is spent; use this verb
for older studies (it records the validation settings first) or to validate early. Settings cannot
change once a round has run (held-out results must be paired on the same seeds).

examples:
  skiptune validate --model demo --nfe 9
  skiptune validate --model demo --nfe 5 --validate-top-k 5 --validate-samples 50000
  skiptune worker --model demo --nfe 9           # evaluates the jobs
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_study_selector(parser)
    add_validation_options(parser)
    add_storage(parser)
    add_json(parser)


def run(args: argparse.Namespace) -> int:
    from skiptune.search.experiment.on_demand import request_validation, search_seeds
    from skiptune.search.query import pick_study

    if args.no_validate:
        raise SkiptuneError("--no-validate makes no sense for `skiptune validate`; leave it out")
    url = normalize_url(storage_url(args))
    if url.startswith("sqlite"):
        require_existing_sqlite(url)  # validation never creates studies: a missing file is a typo
    storage = open_storage(url)
    study = pick_study(storage, args.model, args.nfe, args.sampler, args.study)
    seed_base, n_samples = search_seeds(study)
    ns = argparse.Namespace(**{**vars(args), "n_samples": n_samples, "seed_base": seed_base})
    result = request_validation(storage, study, validation_settings(ns, n_trials=study.spec.n_trials))
    if args.json:
        print_json(result)
        return 0
    jobs = result["enqueued"]
    if jobs:
        print(f"{study.name}: enqueued {len(jobs)} validation jobs in {result['round']}")
        for params in jobs:
            print("  " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(params.items())))
        print(f"evaluate them with: skiptune worker --model {args.model} --nfe {args.nfe}")
    else:
        print(f"{study.name}: every top-{result['settings']['top_k']} candidate is validated or queued "
              f"already; status {result['status']}")  # fmt: skip
    return 0
