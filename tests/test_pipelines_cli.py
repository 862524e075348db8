"""End to end on the CPU with a tiny Stable Diffusion folder: `study create --prompts --guidance`, a
worker trial, `best`, `sample --tuned` (the study's prompts and guidance) writing decoded RGB images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from PIL import Image
from tiny_pipelines import make_cli_assets, make_pipeline_folder

from skiptune.cli import main


def test_study_worker_best_sample_on_a_text_to_image_pipeline(tmp_path: Path, capsys) -> None:
    folder, prompts, extractor, reference = make_cli_assets(tmp_path)
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    create = ["study", "create", "--model", str(folder), "--prompts", str(prompts), "--guidance", "3",
              "--sampler", "euler", "--nfe", "3", "--extractor", f"torchscript:{extractor}",
              "--reference", str(reference), "--n-samples", "6", "--rungs", "3,6", "--trials", "2",
              "--no-validate", "--storage", storage, "--json"]  # fmt: skip
    assert main(create) == 0
    created = json.loads(capsys.readouterr().out)
    assert len(created) == 1 and created[0]["name"].startswith("tiny-sd/euler/nfe=3/")
    # other guidance: another study (guidance is part of the identity)
    assert main([*create[:7], "4", *create[8:]]) == 0
    names = {r["name"] for r in json.loads(capsys.readouterr().out)} | {created[0]["name"]}
    assert len(names) == 2
    worker = ["worker", "--model", str(folder), "--device", "cpu", "--batch-size", "4", "--max-trials", "4",
              "--storage", storage]  # fmt: skip
    assert main(worker) == 0
    assert "4 complete" in capsys.readouterr().out  # both studies, their whole budgets
    study = created[0]["name"]
    assert main(["best", "--model", "tiny-sd", "--nfe", "3", "--sampler", "euler", "--study", study,
                 "--storage", storage, "--json"]) == 0  # fmt: skip
    best = json.loads(capsys.readouterr().out)
    assert best["value"] is not None
    assert main(["eval", "--model", str(folder), "--prompts", str(prompts), "--guidance", "3", "--sampler",
                 "euler", "--nfe", "3", "--rho", str(best["rho_bottom"]), str(best["rho_top"]),
                 "--extractor", f"torchscript:{extractor}", "--reference", str(reference), "--n-samples", "6",
                 "--rungs", "3,6", "--device", "cpu", "--no-progress", "--json"]) == 0  # fmt: skip
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["objective"]["guidance"] == "3.0" and evaluated["objective"]["n_prompts"] == "3"
    # the same seeds, prompts and guidance as the study's trial of that pair: the same number
    assert evaluated["results"][-1]["distance"] == pytest.approx(best["value"], rel=1e-6)
    outdir = tmp_path / "images"
    assert main(["sample", "--model", str(folder), "--nfe", "3", "--sampler", "euler", "--tuned",
                 "--study", study, "--seeds", "0-3", "--outdir", str(outdir), "--device", "cpu",
                 "--storage", storage]) == 0  # fmt: skip
    pngs = sorted(outdir.iterdir())
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(4)]
    assert np.asarray(Image.open(pngs[0])).shape == (16, 16, 3)  # decoded by the VAE


@pytest.mark.parametrize(
    ("extra", "message"),
    [([], "is text-conditional: pass --prompts"),
     (["--prompts", "EMPTY"], "has no prompt"),
     (["--prompts", "PROMPTS", "--guidance", "0.5"], "expected a scale >= 1"),
     (["--guidance", "3"], "need --prompts FILE")],
)  # fmt: skip
def test_cli_refusals_are_one_line(tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    folder = make_pipeline_folder(tmp_path / "tiny-sd")
    capsys.readouterr()  # save_pretrained's progress bars
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "prompts.txt").write_text("a cat\n")
    extra = [str(tmp_path / "empty.txt") if a == "EMPTY" else str(tmp_path / "prompts.txt") if a == "PROMPTS"
             else a for a in extra]  # fmt: skip
    argv = ["sample", "--model", str(folder), "--nfe", "3", "--sampler", "euler", "--out",
            str(tmp_path / "x.png"), "--device", "cpu", *extra]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.png").exists()
