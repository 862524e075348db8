"""The latent text-conditional demo (``demo-latent``): tokenizer, pipeline folder, loss, recipe, plugin."""

from __future__ import annotations

import gzip
import json
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

from skiptune.demo.training.latent import components as parts  # noqa: E402
from skiptune.demo.training.latent.__main__ import main as latent_main  # noqa: E402
from skiptune.demo.training.latent.__main__ import parse_settings  # noqa: E402
from skiptune.demo.training.latent.denoiser import prompt_ids  # noqa: E402
from skiptune.demo.training.latent.prompts import (  # noqa: E402
    CLASS_NAMES,
    EOS,
    MAX_LENGTH,
    build_tokenizer,
    class_prompt,
    prompt_words,
    training_prompts,
)
from skiptune.demo.training.latent.recipe import LatentRecipe, run_recipe  # noqa: E402
from skiptune.demo.training.latent.vp_loss import VPEpsilonLoss, alphas_cumprod  # noqa: E402
from skiptune.errors import SkiptuneError  # noqa: E402

TINY = parts.LatentDemoConfig.tiny()


def _tiny_pipeline(folder: Path, *, half: bool = True, seed: int = 0) -> object:
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = parts.build_text_encoder(TINY, tokenizer)
    pipeline = parts.assemble_pipeline(
        vae=parts.build_vae(TINY), text_encoder=text_encoder, tokenizer=tokenizer, unet=parts.build_unet(TINY)
    )
    parts.save_pipeline(pipeline, folder, half=half)
    return pipeline


def _generate(pipeline: object, prompts: list[str], *, steps: int = 2, guidance: float = 3.0) -> torch.Tensor:
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    out = pipeline(prompts, num_inference_steps=steps, guidance_scale=guidance,  # type: ignore[operator]
                   generator=gens, output_type="pt")  # fmt: skip
    return out.images


def test_every_prompt_word_is_one_token_and_files_agree(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    tokenizer = build_tokenizer()
    for word in prompt_words():
        assert tokenizer.tokenize(word) == [word + "</w>"], word
    ids = prompt_ids(tokenizer, [class_prompt(9), ""])
    assert ids.shape == (2, MAX_LENGTH)
    eos = tokenizer.convert_tokens_to_ids(EOS)
    # <bos> a photo of a ankle boot <eos> then <eos> padding, as SD 1.x pads
    assert ids[0, :8].tolist() == [tokenizer.bos_token_id, *tokenizer.convert_tokens_to_ids(
        [w + "</w>" for w in ["a", "photo", "of", "a", "ankle", "boot"]]), eos]  # fmt: skip
    assert set(ids[0, 8:].tolist()) == {eos} and ids[1, 0] == tokenizer.bos_token_id
    # The SD-1.x files alone (vocab.json + merges.txt, no tokenizer.json) give the same ids.
    tokenizer.save_pretrained(tmp_path)
    from skiptune.demo.training.latent.prompts import write_vocab_files

    write_vocab_files(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    reloaded = CLIPTokenizer.from_pretrained(tmp_path)
    texts = [p for p, _ in training_prompts()] + ["", "a sandal and a boot"]
    assert prompt_ids(reloaded, texts).tolist() == prompt_ids(tokenizer, texts).tolist()


def test_training_prompts_cover_every_class_in_every_template() -> None:
    prompts = training_prompts()
    assert len(prompts) == len(CLASS_NAMES) * 5 and len({p for p, _ in prompts}) == len(prompts)
    assert prompts[7 * 5] == ("a photo of a sneaker", 7)
    assert [lab for _, lab in prompts] == sorted(lab for _, lab in prompts)


def test_tiny_pipeline_folder_loads_and_generates_with_diffusers(tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    folder = tmp_path / "pipe"
    original = _tiny_pipeline(folder, half=False)
    assert parts.check_pipeline_folder(folder) == folder
    index = json.loads((folder / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["tokenizer"][1] == "CLIPTokenizer"
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        assert (folder / "tokenizer" / name).is_file()
    assert list(folder.glob("*/*.safetensors")) and not list(folder.glob("*/*.bin"))
    loaded = StableDiffusionPipeline.from_pretrained(folder)
    assert loaded.scheduler.config.prediction_type == "epsilon" and loaded.vae_scale_factor == 2
    prompts = [class_prompt(7), class_prompt(8)]
    images = _generate(loaded, prompts)
    assert images.shape == (2, 1, 32, 32) and torch.isfinite(images).all()
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    torch.testing.assert_close(images, _generate(original, prompts), rtol=0, atol=1e-5)
    assert not torch.equal(images, _generate(loaded, prompts, guidance=1.0))  # guidance changes samples


def test_half_folder_is_smaller_and_loads_as_float32(tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    _tiny_pipeline(tmp_path / "full", half=False)
    _tiny_pipeline(tmp_path / "half", half=True)
    assert parts.folder_bytes(tmp_path / "half") < 0.75 * parts.folder_bytes(tmp_path / "full")
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path / "half")
    for module in (loaded.unet, loaded.vae, loaded.text_encoder):
        assert {p.dtype for p in module.parameters()} == {torch.float32}
    assert _generate(loaded, [class_prompt(0)]).shape == (1, 1, 32, 32)


def test_vp_loss_noises_as_diffusers_and_weights_min_snr() -> None:
    from diffusers import DDPMScheduler

    abar = alphas_cumprod(parts.SCHEDULER_CONFIG)
    g = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(5, 4, 8, 8, generator=g), torch.randn(5, 4, 8, 8, generator=g)
    t = torch.tensor([0, 1, 250, 700, 999])
    expected = DDPMScheduler.from_config(parts.SCHEDULER_CONFIG).add_noise(z0, noise, t)
    loss = VPEpsilonLoss(abar, min_snr_gamma=5.0)
    torch.testing.assert_close(loss.noisy(z0, t, noise), expected, rtol=1e-5, atol=1e-6)
    snr = abar[t] / (1 - abar[t])
    torch.testing.assert_close(loss.weight(t), torch.minimum(snr, torch.tensor(5.0)) / snr)
    assert float(loss.weight(t)[-1]) == 1.0 and float(loss.weight(t)[0]) < 0.01  # noisy: 1; clean: down
    assert torch.equal(VPEpsilonLoss(abar, min_snr_gamma=None).weight(t), torch.ones(5))


def test_check_pipeline_folder_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "unet").mkdir()
    with pytest.raises(SkiptuneError, match=r"missing model_index\.json, vae, text_encoder"):
        parts.check_pipeline_folder(tmp_path)


@pytest.mark.parametrize("text", ["ddim:0:3", "ddim:50", "heun:10:3", "ddim:50:0.5", "ddim:x:3"])
def test_bad_eval_settings_are_one_line(text: str) -> None:
    with pytest.raises(SkiptuneError, match="bad --eval item"):
        parse_settings(text)
    assert [s.key for s in parse_settings("ddim:50:3, dpmpp_2m:10:2.5")] == [
        "ddim_50steps_cfg3", "dpmpp_2m_10steps_cfg2.5"]  # fmt: skip


def _tiny_fashion_mnist(folder: Path, n: int = 16) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for stem in ("train", "t10k"):
        for kind, array in (("images-idx3", rng.integers(0, 256, (n, 28, 28))),
                            ("labels-idx1", np.arange(n) % 10)):  # fmt: skip
            header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
            with gzip.open(folder / f"{stem}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.slow
def test_recipe_trains_writes_and_measures_a_tiny_model(tmp_path: Path) -> None:
    _tiny_fashion_mnist(tmp_path / "fm")
    recipe = LatentRecipe(
        out=tmp_path / "pipe", data=str(tmp_path / "fm"), device="cpu", stats_out=tmp_path / "stats.npz"
    ).smoke()
    recipe = replace(recipe, vae=replace(recipe.vae, steps=2, batch_size=4),
                     denoiser=replace(recipe.denoiser, steps=2, batch_size=4),
                     eval_samples=4, eval_batch_size=4)  # fmt: skip
    log = run_recipe(recipe, emit=lambda _: lambda entry: None)
    assert log["bytes"] == parts.folder_bytes(tmp_path / "pipe") and log["prediction_type"] == "epsilon"
    assert log["denoiser"]["steps"] == 2 and log["vae"]["steps"] == 2 and log["vae"]["scaling_factor"] > 0
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tmp_path / "pipe" / "vae")
    assert vae.config.scaling_factor == pytest.approx(log["vae"]["scaling_factor"])
    (result,) = log["evaluation"]["settings"]
    assert (result["samples"], result["steps"], result["guidance"]) == (4, 3, 3.0)
    assert 0.0 <= result["prompt_accuracy"] <= 1.0 and result["frechet_distance"] > 0
    assert set(result["prompt_accuracy_by_class"]) == set(CLASS_NAMES)
    assert log["evaluation"]["vae_roundtrip_test"]["samples"] == 4
    # The saved statistics give back the logged distance (the device may lack torch-fidelity).
    from skiptune.demo.bundled import DEMO_REFERENCE_PATH
    from skiptune.objectives.frechet import frechet_distance
    from skiptune.objectives.reference import load_reference

    ref, key = load_reference(DEMO_REFERENCE_PATH), result["setting"]
    with np.load(tmp_path / "stats.npz") as stats:
        assert int(stats[f"{key}_count"]) == 4
        distance = frechet_distance(stats[f"{key}_mu"], stats[f"{key}_sigma"], ref.mu, ref.sigma)
    assert distance == pytest.approx(result["frechet_distance"], rel=1e-9)


def test_cli_refuses_bad_eval_with_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert latent_main(["--out", str(tmp_path / "x"), "--eval", "ddim:50:0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad --eval item 'ddim:50:0'" in err[0]
    assert not (tmp_path / "x").exists()


def test_demo_latent_is_registered_and_fails_in_one_line_until_shipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import skiptune.demo as demo
    from skiptune.plugins import MODELS

    monkeypatch.setattr(demo, "DEMO_LATENT_PATH", tmp_path / "absent")
    assert "demo-latent" in MODELS.names()
    with pytest.raises(SkiptuneError) as info:
        MODELS.get("demo-latent")()
    assert "demo-latent" in str(info.value) and "gpu_latent_demo.sh" in str(info.value)
    assert "\n" not in str(info.value)
    from diffusers import StableDiffusionPipeline

    _tiny_pipeline(tmp_path / "latent")
    monkeypatch.setattr(demo, "DEMO_LATENT_PATH", tmp_path / "latent")
    folder = MODELS.get("demo-latent")()
    assert folder == tmp_path / "latent"
    assert _generate(StableDiffusionPipeline.from_pretrained(folder), [class_prompt(3)]).shape == (
        1,
        1,
        32,
        32,
    )
