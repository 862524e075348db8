"""The prompt-alignment guard: the CLIP score (Hessel et al. 2021) of a tiny random CLIP folder, the decision
rule on constructed held-out blocks, and end to end with the tiny text-to-image pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from optuna.trial import TrialState
from tiny_pipelines import PROMPTS, make_cli_assets, make_clip_folder

from skiptune.cli import main
from skiptune.objectives.clip_score import load_clip_scorer
from skiptune.objectives.holdout import BlockDistances
from skiptune.search import records as rec
from skiptune.search.experiment.state import load_experiment
from skiptune.search.experiment.validation import NO_GAIN, VALIDATED, decide
from skiptune.search.study import find_studies
from skiptune.storage import open_storage


def _features(out: object) -> torch.Tensor:
    return getattr(out, "pooler_output", out)  # type: ignore[return-value]  # transformers 5: an output object


def test_clip_score_is_100_times_the_clipped_cosine(tmp_path: Path) -> None:
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder = make_clip_folder(tmp_path / "clip")
    scorer = load_clip_scorer(folder)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 16, 24), generator=generator, dtype=torch.uint8)
    got = scorer.scores(images, PROMPTS)
    # independently: transformers' own loading, preprocessing and feature functions
    model = CLIPModel.from_pretrained(str(folder)).eval()
    pixels = CLIPImageProcessor.from_pretrained(str(folder))(images=list(images), return_tensors="pt")
    assert tuple(pixels["pixel_values"].shape) == (3, 3, 32, 32)  # resized and cropped to the model's size
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    tokens = tokenizer(PROMPTS, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        image = _features(model.get_image_features(pixel_values=pixels["pixel_values"]))
        text = _features(model.get_text_features(**tokens))
    cos = torch.nn.functional.cosine_similarity(image.double(), text.double())
    assert got.tolist() == pytest.approx((100 * cos.clamp(min=0)).tolist(), abs=1e-4)
    # the guard's identity is the folder's: the same files, the same identity; other weights, another
    assert load_clip_scorer(folder).identity == scorer.identity
    assert load_clip_scorer(make_clip_folder(tmp_path / "other", seed=1)).identity != scorer.identity


def _blocks(value: float, loo: list[float], clip_sums: list[float] | None) -> BlockDistances:
    """4 blocks of 2 held-out samples."""
    sums = tuple(clip_sums) if clip_sums is not None else None
    return BlockDistances(value, tuple(loo), n_samples=8, seed_base=10**9, clip_sums=sums)


BASELINE = {"rho_bottom": 1.0, "rho_top": 1.0}
DROPS = {"rho_bottom": 0.5, "rho_top": 0.9}  # the best distance, but a CLIP score 10 points lower
HOLDS = {"rho_bottom": 0.8, "rho_top": 0.95}  # a smaller gain, CLIP score -0.25 +- 0.32


def test_the_guard_rejects_a_significant_clip_drop_and_keeps_an_insignificant_one() -> None:
    base = _blocks(10.0, [10.0, 10.1, 9.9, 10.0], [80, 80, 80, 80])  # mean CLIP score 40
    drops = (DROPS, _blocks(8.0, [8.0, 8.05, 7.95, 8.0], [60, 61, 59, 60]))
    holds = (HOLDS, _blocks(9.0, [9.0, 9.05, 8.95, 9.0], [79, 81, 78, 80]))
    unguarded = decide(BASELINE, base, [drops, holds], threshold=2.0)
    assert (unguarded.status, unguarded.params, unguarded.clip_rejected) == (VALIDATED, DROPS, ())
    guarded = decide(BASELINE, base, [drops, holds], threshold=2.0, clip_guard=True)
    assert (guarded.status, guarded.params) == (VALIDATED, HOLDS)
    assert [c.params for c in guarded.clip_rejected] == [DROPS]
    rejected = guarded.clip_rejected[0]
    assert rejected.clip_change == pytest.approx(-10.0) and rejected.clip_baseline == pytest.approx(40.0)
    assert rejected.clip_change_se == pytest.approx((0.75 * 2 * (1 / 6) ** 2) ** 0.5)  # jackknife by hand
    kept = guarded.best
    assert kept.clip_change == pytest.approx(-0.25) and kept.clip_value == pytest.approx(39.75)
    diffs = [(318 - s) / 6 - 40 for s in (79, 81, 78, 80)]
    assert kept.clip_change_se == pytest.approx((0.75 * sum((d + 0.25) ** 2 for d in diffs)) ** 0.5)
    assert -kept.clip_change < 2.0 * kept.clip_change_se  # type: ignore[operator]
    # nothing left: no-gain, the answer is (1, 1)
    alone = decide(BASELINE, base, [drops], threshold=2.0, clip_guard=True)
    assert (alone.status, alone.params) == (NO_GAIN, BASELINE)
    # a candidate without CLIP scores is not recommended under the guard (nothing measured, nothing shown)
    unmeasured = (HOLDS, _blocks(9.0, [9.0, 9.05, 8.95, 9.0], None))
    assert decide(BASELINE, base, [unmeasured], threshold=2.0, clip_guard=True).status == NO_GAIN
    # stored and read back; a job stored before the guard has none
    assert BlockDistances.from_dict(drops[1].to_dict()) == drops[1]
    assert "clip_sums" not in unmeasured[1].to_dict()


def test_study_with_the_guard_records_clip_scores_and_best_reports_them(tmp_path: Path, capsys) -> None:
    folder, prompts, extractor, reference = make_cli_assets(tmp_path)
    clip = make_clip_folder(tmp_path / "clip")
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    create = ["study", "create", "--model", str(folder), "--prompts", str(prompts), "--guidance", "3",
              "--sampler", "euler", "--nfe", "3", "--extractor", f"torchscript:{extractor}",
              "--reference", str(reference), "--n-samples", "6", "--rungs", "3,6", "--trials", "3",
              "--validate-samples", "8", "--validate-blocks", "4", "--validate-top-k", "1",
              "--growth-trials", "0", "--refine-trials", "0", "--no-window", "--clip-guard", str(clip),
              "--storage", storage, "--json"]  # fmt: skip
    assert main(create) == 0
    capsys.readouterr()
    worker = ["worker", "--model", str(folder), "--device", "cpu", "--batch-size", "4", "--heartbeat", "1",
              "--grace", "4", "--storage", storage]  # fmt: skip
    clip.rename(tmp_path / "clip-elsewhere")  # a worker without the study's CLIP folder: one line, no job
    assert main(worker) == 2
    err = capsys.readouterr().err
    assert "CLIP guard folder" in err and "is not on this machine" in err, err
    assert err.strip().count("\n") == 0, err
    opened = open_storage(storage)
    (study,) = find_studies(opened)
    waiting = [t for r in load_experiment(opened, study).rounds for t in r.trials]
    assert waiting and all(t.state == TrialState.WAITING for t in waiting)
    (tmp_path / "clip-elsewhere").rename(clip)
    assert main(worker) == 0
    (study,) = find_studies(opened)
    exp = load_experiment(opened, study)
    assert exp.settings is not None and exp.settings.clip_guard == str(clip.resolve())
    jobs = [t for r in exp.rounds for t in r.trials if t.state == TrialState.COMPLETE]
    assert len(jobs) == 2  # the baseline and the top candidate
    for job in jobs:
        sums = job.user_attrs[rec.HOLDOUT_ATTR]["clip_sums"]
        assert len(sums) == 4 and all(0 <= s <= 2 * 100 for s in sums)  # 2 samples a block, each <= 100
    capsys.readouterr()
    assert main(["best", "--model", "tiny-sd", "--nfe", "3", "--sampler", "euler", "--storage", storage,
                 "--json"]) == 0  # fmt: skip
    best = json.loads(capsys.readouterr().out)
    assert best["status"] in (VALIDATED, NO_GAIN)
    baseline = next(t for t in jobs if t.user_attrs[rec.ROLE_ATTR] == rec.BASELINE)
    assert best["clip_baseline"] == pytest.approx(sum(baseline.user_attrs[rec.HOLDOUT_ATTR]["clip_sums"]) / 8)
    assert isinstance(best["clip_change"], float) and isinstance(best["clip_change_se"], float)
    assert isinstance(best["clip_rejected"], list)
    assert main(["table", "--model", "tiny-sd", "--storage", storage]) == 0
    assert "CLIP" in capsys.readouterr().out


def test_clip_guard_without_a_text_to_image_study_is_one_line(tmp_path: Path, capsys) -> None:
    argv = ["study", "create", "--model", "demo", "--nfe", "5", "--extractor", "fmnist-classifier",
            "--reference", "demo", "--clip-guard", str(tmp_path / "clip"),
            "--storage", f"sqlite:///{tmp_path / 'db.sqlite'}"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--clip-guard needs a text-to-image study" in err and err.count("\n") == 1, err
    assert not (tmp_path / "db.sqlite").exists()
