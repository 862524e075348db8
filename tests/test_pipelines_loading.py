"""Stable Diffusion folders: loading, fingerprint, bad inputs (one line each), prompts and guidance as
conditions (sample i <-> prompt seed mod P, one guided evaluation = one NFE at twice the batch), VAE
decoding, and EDM2's latent decoding against its own recipe."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from tiny_pipelines import PROMPTS, make_pipeline_folder, tiny_vae

from skiptune.errors import SkiptuneError
from skiptune.nets.registry import fingerprint, load_model
from skiptune.objectives.spec import ObjectiveSpec
from skiptune.sampling import Conditioning, bind_conditioning, generate_images, read_prompts
from skiptune.sampling.conditions import check_conditioning


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pipeline_folder(tmp_path_factory.mktemp("sd") / "pipe")


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_folder_loads_as_latent_text_denoiser(folder: Path) -> None:
    loaded = load_model(folder)
    net = loaded.net
    assert loaded.name == "pipe" and not net.training
    assert (net.img_channels, net.img_resolution, net.label_dim) == (4, 8, 0)
    assert (net.image_channels, net.image_resolution) == (3, 16)  # what the objective sees
    assert 0.02 < net.sigma_min < 0.03 and 14 < net.sigma_max < 15  # SD's scaled_linear schedule
    assert load_model(folder).fingerprint == loaded.fingerprint == fingerprint(net)


@pytest.mark.parametrize(
    ("path", "change"),
    [
        ("scheduler/scheduler_config.json", {"beta_end": 0.013}),  # other sigmas
        ("vae/config.json", {"scaling_factor": 0.2}),  # other decoding
        ("tokenizer/tokenizer_config.json", {"model_max_length": 7}),  # other text conditions
    ],
)
def test_fingerprint_covers_what_changes_samples(
    folder: Path, tmp_path: Path, path: str, change: dict
) -> None:
    copy = _copy(folder, tmp_path)
    _edit_json(copy / path, **change)
    assert load_model(copy).fingerprint != load_model(folder).fingerprint


def test_fingerprint_ignores_who_wrote_the_configs(folder: Path, tmp_path: Path) -> None:
    copy = _copy(folder, tmp_path)
    _edit_json(copy / "unet" / "config.json", _diffusers_version="9.9.9")
    assert load_model(copy).fingerprint == load_model(folder).fingerprint


def _one_line(exc: pytest.ExceptionInfo[SkiptuneError]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: _edit_json(p / "model_index.json", _class_name="StableDiffusionXLPipeline"), "SDXL"),
        (lambda p: _edit_json(p / "model_index.json", _class_name="KandinskyPipeline"), "not supported"),
        (lambda p: (p / "model_index.json").unlink() or shutil.rmtree(p / "unet"),
         "not a diffusers pipeline"),
        (lambda p: _edit_json(p / "model_index.json", text_encoder=["transformers", "T5EncoderModel"]),
         "expected CLIPTextModel"),
        (lambda p: _edit_json(p / "unet" / "config.json", addition_embed_type="text_time"),
         "extra conditioning"),
        (lambda p: _edit_json(p / "scheduler" / "scheduler_config.json", rescale_betas_zero_snr=True),
         "rescale_betas_zero_snr"),
        (lambda p: (p / "unet" / "diffusion_pytorch_model.safetensors").rename(
            p / "unet" / "diffusion_pytorch_model.bin"), "never from pickled .bin"),
        (lambda p: (p / "unet" / "config.json").write_text("{not json"), "not valid JSON"),
    ],
)  # fmt: skip
def test_bad_folders_are_one_line(folder: Path, tmp_path: Path, edit, message: str) -> None:
    copy = _copy(folder, tmp_path)
    edit(copy)
    with pytest.raises(SkiptuneError) as exc:
        load_model(copy)
    assert message in _one_line(exc)


def test_vae_latent_channels_must_match_the_unet(tmp_path: Path) -> None:
    root = make_pipeline_folder(tmp_path / "mixed", vae_latent_channels=3)
    with pytest.raises(SkiptuneError) as exc:
        load_model(root)
    assert "VAE has 3 latent channels but the UNet takes 4" in _one_line(exc)


def test_prompts_file_and_conditioning_refusals(tmp_path: Path) -> None:
    good = tmp_path / "prompts.txt"
    good.write_text("\ufeffa cat\n\n  a dog  \r\n")
    assert read_prompts(good) == ("a cat", "a dog")
    for name, data, message in [
        ("empty.txt", b"\n  \n", "has no prompt"),
        ("binary.txt", b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8 text"),
        ("latin1.txt", "caf\xe9".encode("latin-1"), "not UTF-8 text"),
    ]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SkiptuneError) as exc:
            read_prompts(tmp_path / name)
        assert message in _one_line(exc)
    with pytest.raises(SkiptuneError, match="cannot read prompts file"):
        read_prompts(tmp_path / "absent.txt")
    with pytest.raises(SkiptuneError, match="expected a scale >= 1"):
        Conditioning(("a",), guidance=0.5)
    with pytest.raises(SkiptuneError, match="expected a scale >= 1"):
        Conditioning(("a",), guidance=float("nan"))
    with pytest.raises(SkiptuneError, match="needs --guidance > 1"):
        Conditioning(("a",), negative_prompt="blurry")


def test_text_models_need_prompts_and_others_refuse_them(folder: Path) -> None:
    from helpers import tiny_precond

    net = load_model(folder).net
    with pytest.raises(SkiptuneError, match="is text-conditional: pass --prompts"):
        check_conditioning(net, None)
    with pytest.raises(SkiptuneError, match="needs prompts"):
        next(generate_images(net, sampler="euler", nfe=2, seeds=[0], batch_size=1, device="cpu"))
    with pytest.raises(SkiptuneError, match="takes no text"):
        check_conditioning(tiny_precond("SongUNet"), Conditioning(("a",)))


def test_sample_gets_prompt_seed_mod_p_and_batches_do_not_matter(folder: Path) -> None:
    net = load_model(folder).net
    bound = bind_conditioning(net, Conditioning(tuple(PROMPTS), guidance=2.0), device="cpu")
    seeds = [5, 0, 1, 2, 3, 4]
    whole = torch.cat(list(generate_images(bound, sampler="dpmpp_2m", nfe=3, seeds=seeds, batch_size=6,
                                           device="cpu")))  # fmt: skip
    assert whole.dtype == torch.uint8 and whole.shape == (6, 3, 16, 16)  # decoded by the VAE
    split = torch.cat(list(generate_images(bound, sampler="dpmpp_2m", nfe=3, seeds=seeds, batch_size=4,
                                           device="cpu")))  # fmt: skip
    torch.testing.assert_close(split.int(), whole.int(), rtol=0, atol=1)
    # seed 5 alone, with a one-prompt list holding prompt 5 mod 3, is the same sample
    single = bind_conditioning(net, Conditioning((PROMPTS[5 % 3],), guidance=2.0), device="cpu")
    alone = next(generate_images(single, sampler="dpmpp_2m", nfe=3, seeds=[6], batch_size=1, device="cpu"))
    other = next(generate_images(bound, sampler="dpmpp_2m", nfe=3, seeds=[6], batch_size=1, device="cpu"))
    assert (alone.int() - other.int()).abs().max() > 0  # seed 6 -> prompt 0 in the 3-prompt list
    six = next(generate_images(single, sampler="dpmpp_2m", nfe=3, seeds=[5], batch_size=1, device="cpu"))
    torch.testing.assert_close(six.int(), whole[:1].int(), rtol=0, atol=1)


@pytest.mark.parametrize(("guidance", "batch"), [(1.0, 3), (4.0, 6)])
def test_one_guided_evaluation_is_one_nfe_at_twice_the_batch(
    folder: Path, guidance: float, batch: int
) -> None:
    net = load_model(folder).net
    bound = bind_conditioning(net, Conditioning(tuple(PROMPTS), guidance=guidance), device="cpu")
    calls: list[int] = []
    handle = net.unet.register_forward_pre_hook(lambda _m, args: calls.append(int(args[0].shape[0])))
    try:
        next(generate_images(bound, sampler="euler", nfe=4, seeds=[0, 1, 2], batch_size=3, device="cpu"))
    finally:
        handle.remove()
    assert calls == [batch] * 4


def test_conditioning_is_part_of_the_objective_identity() -> None:
    base = ObjectiveSpec(extractor="fmnist-classifier", feature_dim=6, reference="/r.npz",
                         reference_sha256="ab" * 32, n_samples=10)  # fmt: skip
    plain = base.identity(sampler="euler", nfe=5, settings={})
    assert not any("prompt" in k or "guidance" in k for k in plain)  # old studies keep their identity
    cond = Conditioning(("a cat", "a dog"), "blurry", 7.5)
    spec = ObjectiveSpec(**{**base.__dict__, "conditioning": cond})
    ident = spec.identity(sampler="euler", nfe=5, settings={})
    assert ident["guidance"] == "7.5" and ident["n_prompts"] == "2" and ident["negative_prompt"] == "blurry"
    others = [
        Conditioning(("a cat", "a dog"), "blurry", 7.0),
        Conditioning(("a dog", "a cat"), "blurry", 7.5),
        Conditioning(("a cat", "a dog"), "", 7.5),
    ]
    for other in others:
        changed = ObjectiveSpec(**{**base.__dict__, "conditioning": other})
        assert changed.identity(sampler="euler", nfe=5, settings={}) != ident
    back = ObjectiveSpec.from_args(json.loads(json.dumps(spec.to_args())), feature_dim=6)
    assert back == spec and ObjectiveSpec.from_args(base.to_args(), feature_dim=6) == base


def test_edm2_latent_decode_equals_the_vae_with_edm2_constants(tmp_path: Path) -> None:
    from skiptune.nets.pipelines.latent import edm2_decoder, load_vae
    from skiptune.sampling import decode, to_uint8

    torch.manual_seed(0)
    tiny_vae(4).save_pretrained(str(tmp_path / "vae"))
    vae = load_vae(tmp_path / "vae")
    decoder = edm2_decoder(vae, latent_resolution=8)
    assert (decoder.image_channels, decoder.image_resolution) == (3, 16)
    z = torch.randn(11, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * 0.5  # EDM2 latents: std 0.5
    ours = to_uint8(decoder(z).double())
    # EDM2's recipe written out here: final = raw * scale + bias, scale = 0.5 / raw_std,
    # bias = -raw_mean * scale (float32, as numpy there); decode: raw -> VAE -> clamp(0, 1) * 255 ->
    # truncating uint8 cast.
    raw_std = np.float32([4.17, 4.62, 3.71, 3.28])
    scale = np.float32(0.5) / raw_std
    bias = np.float32(0) - np.float32([5.81, 3.25, 0.12, -2.15]) * scale
    raw = (z - torch.from_numpy(bias).reshape(1, -1, 1, 1)) / torch.from_numpy(scale).reshape(1, -1, 1, 1)
    with torch.no_grad():
        theirs = (vae.decode(raw).sample.clamp(0, 1) * 255).to(torch.uint8)
    diff = (ours.int() - theirs.int()).abs()
    assert theirs.float().std() > 5  # not a constant image
    # Equal but for float rounding at the truncation boundaries: x = (255 y - 128) / 127.5, then
    # 127.5 x + 128 may land an ulp below an integer that 255 y hits exactly.
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3
    # the generate path decodes through the same decoder: a latent net exposes it as decode()
    holder = torch.nn.Module()
    holder.decode = decoder  # type: ignore[assignment]
    torch.testing.assert_close(decode(holder, z.double()), decoder(z).double())


def _tiny_edm2(tmp_path: Path) -> Path:
    from skiptune.nets.checkpoints import save_checkpoint
    from skiptune.nets.edm2 import EDM2Precond

    torch.manual_seed(4)
    net = EDM2Precond(img_resolution=8, img_channels=4, label_dim=10, use_fp16=False, model_channels=16,
                      channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], logvar_channels=8,
                      channels_per_head=16)  # fmt: skip
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.5)  # EDM2 initialises output gains to zero: make every layer matter
    return save_checkpoint(net, tmp_path / "edm2-tiny.pt")


def _latent_file(tmp_path: Path, vae_channels: int = 4) -> Path:
    torch.manual_seed(0)
    tiny_vae(vae_channels).save_pretrained(str(tmp_path / "vae"))
    spec = {
        "format": "skiptune-latent",
        "denoiser": _tiny_edm2(tmp_path).name,
        "vae": "vae",
        "latents": "edm2",
    }
    path = tmp_path / "edm2-latent.json"
    path.write_text(json.dumps(spec))
    return path


def test_edm2_latent_model_file_samples_latents_and_decodes_them(tmp_path: Path) -> None:
    from skiptune.sampling import sample_batch, to_uint8
    from skiptune.skips import SkipSchedule, skip_tuning

    path = _latent_file(tmp_path)
    loaded = load_model(path)
    net = loaded.net
    assert (net.img_channels, net.img_resolution, net.image_channels, net.image_resolution) == (4, 8, 3, 16)
    assert loaded.fingerprint != load_model(tmp_path / "edm2-tiny.pt").fingerprint  # the VAE is in it
    kwargs = dict(sampler="heun", nfe=5, seeds=[0, 1], device="cpu")
    images = next(generate_images(net, batch_size=2, **kwargs))  # type: ignore[arg-type]
    assert images.shape == (2, 3, 16, 16) and images.float().std() > 1
    torch.testing.assert_close(images, to_uint8(net.decode(sample_batch(net, **kwargs).float()).double()))
    with skip_tuning(net, SkipSchedule(0.5, 1.2, sigma_window=(0.1, 50.0))):  # native buffers, windows work
        tuned = next(generate_images(net, batch_size=2, **kwargs))  # type: ignore[arg-type]
    assert not torch.equal(tuned, images)
    _edit_json(tmp_path / "vae" / "config.json", scaling_factor=0.3)  # not used by EDM2, but a config change
    assert load_model(path).fingerprint != loaded.fingerprint


def test_edm2_latent_model_file_refusals(tmp_path: Path) -> None:
    path = _latent_file(tmp_path, vae_channels=3)
    with pytest.raises(SkiptuneError) as exc:
        load_model(path)
    assert "has 3 latent channels but the denoiser samples 4" in _one_line(exc)
    _edit_json(path, latents="sdxl")
    with pytest.raises(SkiptuneError, match="latents 'sdxl' are not known"):
        load_model(path)
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(SkiptuneError, match="expected a latent model file"):
        load_model(path)


def test_sigma_to_timestep_inverts_diffusers_euler_interpolation(folder: Path) -> None:
    from skiptune.nets.pipelines.denoiser import sigma_to_timestep

    table = load_model(folder).net.sigma_table
    t = torch.tensor([0.0, 1.0, 17.25, 500.5, 998.75, 999.0], dtype=torch.float64)
    # diffusers' EulerDiscreteScheduler: sigma(t) = np.interp(t, arange(T), sigmas)
    sigma = torch.from_numpy(np.interp(t.numpy(), np.arange(len(table)), table.numpy()))
    torch.testing.assert_close(sigma_to_timestep(sigma, table).double(), t, rtol=0, atol=1e-4)
    outside = sigma_to_timestep(torch.tensor([1e-4, 1e3]), table)
    assert outside.tolist() == [0.0, float(len(table) - 1)]  # clamped to the trained range


def test_retuning_a_compiled_pipeline_never_recompiles(folder: Path) -> None:
    from skiptune.nets.fast import prepare_denoiser
    from skiptune.skips import SkipSchedule, skip_tuning

    compiles = []

    def backend(gm: torch.fx.GraphModule, _inputs: list) -> object:
        compiles.append(gm)
        return gm.forward

    net = load_model(folder).net
    fast = prepare_denoiser(net, precision="fp32", channels_last=False, compile=True, backend=backend)
    bound = bind_conditioning(fast, Conditioning(tuple(PROMPTS), guidance=2.0), device="cpu")
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor([1.0, 3.0])
    cond = bound.condition_for_seeds([0, 1], device="cpu")  # type: ignore[operator]
    outs = []
    with torch.inference_mode():
        for rho in (1.0, 0.8, 0.6, 1.2):
            with skip_tuning(bound, SkipSchedule(rho, 1.0)):  # type: ignore[arg-type]
                outs.append(bound(x, sigma, cond))
        plain = bound(x, sigma, cond)
    assert len(compiles) == 1  # the coefficients are buffers read by the hooks, not constants
    assert (outs[1] - outs[0]).abs().max() > 1e-4 and torch.equal(plain, outs[0])


def test_hub_style_folder_vocab_files_and_saved_position_ids(folder: Path, tmp_path: Path) -> None:
    """The layout of Stable Diffusion folders on the Hub: tokenizer as vocab.json + merges.txt (no
    tokenizer.json), text encoder weights that still hold CLIP's position_ids buffer, a PNDM scheduler
    config with its extra keys, and fp16 variant files beside the full ones."""
    from safetensors.torch import load_file, save_file
    from tiny_pipelines import tiny_vocab

    copy = _copy(folder, tmp_path)
    vocab, merges = tiny_vocab()
    tok = copy / "tokenizer"
    (tok / "tokenizer.json").unlink()
    (tok / "vocab.json").write_text(json.dumps(vocab))
    (tok / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    weights = copy / "text_encoder" / "model.safetensors"
    state = load_file(str(weights))
    state["text_model.embeddings.position_ids"] = torch.arange(8).unsqueeze(0)
    save_file(state, str(weights))
    unet = copy / "unet" / "diffusion_pytorch_model.safetensors"
    half = {k: v.half() * 0 for k, v in load_file(str(unet)).items()}  # a variant that must not be read
    save_file(half, str(unet.with_name("diffusion_pytorch_model.fp16.safetensors")))
    _edit_json(copy / "scheduler" / "scheduler_config.json", _class_name="PNDMScheduler", skip_prk_steps=True,
               set_alpha_to_one=False, clip_sample=False)  # fmt: skip
    theirs, ours = load_model(folder).net, load_model(copy).net
    torch.testing.assert_close(
        ours.encode_text(PROMPTS, device="cpu"), theirs.encode_text(PROMPTS, device="cpu")
    )
    torch.testing.assert_close(ours.sigma_table, theirs.sigma_table)
    x, sigma = torch.randn(1, 4, 8, 8), torch.tensor([2.0])
    cond = theirs.encode_text(PROMPTS[:1], device="cpu")
    with torch.inference_mode():
        torch.testing.assert_close(ours(x, sigma, cond), theirs(x, sigma, cond))
