"""ObjectiveSpec: one rung rule, stored arguments round trip, and the frozen identity wire format
(studies in docs/results/wave1/results.db are found by specs built today)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from test_study import make_spec

from skiptune.errors import SkiptuneError
from skiptune.nets.registry import load_model
from skiptune.objectives.features import create_extractor, extractor_name
from skiptune.objectives.spec import ObjectiveSpec, check_rungs, default_rungs
from skiptune.search.pruning import RungPruner
from skiptune.search.space import SearchSpace
from skiptune.search.study import StudySpec
from skiptune.search.worker.objective import study_specs

RESULTS_DB = Path(__file__).resolve().parents[1] / "docs" / "results" / "wave1" / "results.db"
SPEC = make_spec().objective  # tiny, 6 features, /r.npz, sha256 a..a, 16 samples, rungs 8,16


def _stored_studies() -> dict[str, dict[str, object]]:
    """Study name -> user attributes, read from the committed results database without writing to it."""
    url = f"sqlite:///file:{RESULTS_DB}?immutable=1&uri=true"  # no lock, journal or -shm file either
    storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True, skip_table_creation=True)
    try:
        return {s.study_name: s.user_attrs for s in storage.get_all_studies()}
    finally:
        storage.engine.dispose()


def test_one_rung_rule_everywhere() -> None:
    assert check_rungs([2, 5], 5) == (2, 5) and check_rungs([3, 7]) == (3, 7)
    for bad in ([1, 16], [8, 8, 16], [16, 8], [8, 12], []):
        with pytest.raises(SkiptuneError, match="bad rungs"):
            check_rungs(bad, 16)
        with pytest.raises(SkiptuneError, match="bad rungs"):
            replace(SPEC, rungs=tuple(bad) or (1,))
    with pytest.raises(SkiptuneError, match="bad rungs"):
        RungPruner([1, 16])
    assert replace(SPEC, rungs=()).rungs == (16,)  # no early look by default
    assert default_rungs(10000) == (2000, 10000) and default_rungs(9) == (9,) and default_rungs(10) == (2, 10)
    with pytest.raises(SkiptuneError, match="sample count"):
        replace(SPEC, n_samples=1, rungs=(1,))
    with pytest.raises(SkiptuneError, match="seed base"):
        replace(SPEC, seed_base=-1)
    assert replace(SPEC, seed_base=2**32 - SPEC.n_samples).seed_base == 2**32 - SPEC.n_samples
    with pytest.raises(SkiptuneError, match=r"must lie in 0\.\.4294967295"):
        replace(SPEC, seed_base=2**32 - SPEC.n_samples + 1)  # its last seed would wrap onto seed 0


def test_stored_arguments_round_trip() -> None:
    args = SPEC.to_args()
    assert args == {
        "extractor": "tiny", "reference_path": "/r.npz", "reference_sha256": "a" * 64, "n_samples": 16,
        "rungs": [8, 16], "seed_base": 0,
    }  # fmt: skip
    assert ObjectiveSpec.from_args(args, feature_dim=6) == SPEC
    assert ObjectiveSpec.from_args({**args, "rungs": None}, feature_dim=6).rungs == (16,)
    with pytest.raises(SkiptuneError, match="lack reference_sha256"):
        ObjectiveSpec.from_args({k: v for k, v in args.items() if k != "reference_sha256"}, feature_dim=6)


def test_extractor_names_are_the_ones_create_extractor_gives(tmp_path: Path) -> None:
    assert extractor_name("fmnist-classifier") == create_extractor("fmnist-classifier").name
    relative = "torchscript:./a/../b.pt"
    assert extractor_name(relative) == f"torchscript:{Path('./a/../b.pt')}"
    assert replace(SPEC, extractor=relative).extractor == extractor_name(relative)


def test_specs_built_today_find_the_stored_demo_studies() -> None:
    stored = _stored_studies()
    assert len(stored) == 8
    for name, attrs in stored.items():  # rebuilt from the stored arguments, identity re-derived
        spec = StudySpec.from_user_attrs(attrs)
        assert spec is not None and spec.name == name
        assert spec.user_attrs() == attrs
    loaded = load_model("demo", device="cpu")
    for sampler, nfes in (("heun", [5, 7, 9, 13, 19, 35]), ("dpmpp_2m", [5, 10])):
        specs = study_specs(
            loaded, sampler=sampler, nfes=nfes, extractor="fmnist-classifier", reference_path=Path("demo"),
            n_samples=10000, rungs=default_rungs(10000),
            space=SearchSpace(rho_bottom=(0.5, 1.2), rho_top=(0.5, 1.2)),  # the default box of that run
        )  # fmt: skip
        for spec in specs:
            assert spec.name in stored
            # the stored studies predate the recorded sampler sigmas (not part of the identity)
            assert spec.sampler_sigmas is not None
            assert replace(spec, sampler_sigmas=None).user_attrs() == stored[spec.name]
