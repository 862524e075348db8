"""``skiptune sample``: images from a model with given or tuned skip coefficients, as PNGs or a grid."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from skiptune.cli.common import (
    add_conditioning_options,
    add_storage,
    conditioning_from_args,
    model_help,
    parse_float_pair,
    parse_int_list,
    storage_url,
)
from skiptune.errors import SkiptuneError
from skiptune.sampling import SAMPLERS, generate_images
from skiptune.seeds import check_seed_range
from skiptune.skips import SkipSchedule

if TYPE_CHECKING:
    from skiptune.sampling.conditions import Conditioning

#: Image file suffixes --out accepts -> PIL format names.
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}

HELP = "generate images with untuned, given or tuned skip coefficients"
DESCRIPTION = """Generate images for the given seeds (sample i depends on seed i only, as in the
search) with a sampler at a number of function evaluations (NFE), optionally with Skip-Tuning
coefficients: given (--rho) or the best ones recorded in the storage (--tuned).

examples:
  skiptune sample --model demo --nfe 9 --out untuned.png
  skiptune sample --model demo --nfe 9 --rho 0.8 1.0 --out tuned.png
  skiptune sample --model demo --nfe 9 --tuned --storage sqlite:///skiptune.db --out best.png
  skiptune sample --model demo --nfe 9 --tuned --study demo/heun/nfe=9/2d7c3e --out best.png
  skiptune sample --model edm.pkl --nfe 35 --sampler heun --seeds 0-999 --outdir images/ --device cuda
  skiptune sample --model ./stable-diffusion-v1-5 --prompts prompts.txt --guidance 7.5 --sampler dpmpp_2m \\
      --nfe 20 --seeds 0-7 --out sd.png
  skiptune sample --model ./stable-diffusion-v1-5 --sampler dpmpp_2m --nfe 20 --tuned --out sd-tuned.png

Text-conditional models: sample i gets prompt (seed mod P) of --prompts. With --tuned and no --prompts,
the study's own prompts, negative prompt and guidance are used.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help=model_help())
    parser.add_argument("--nfe", required=True, type=int, help="number of function evaluations")
    parser.add_argument(
        "--sampler", default="heun", choices=SAMPLERS.names(), help="sampler (default: %(default)s)"
    )
    rho = parser.add_mutually_exclusive_group()
    rho.add_argument("--rho", nargs=2, metavar=("RB", "RT"), help="skip coefficients rho_bottom rho_top")
    rho.add_argument(
        "--tuned", action="store_true",
        help="use the answer recorded in --storage: its pair and, if it has one, its sigma window",
    )  # fmt: skip
    parser.add_argument(
        "--study", default=None, metavar="NAME", help="with --tuned: the study, when several match"
    )
    parser.add_argument(
        "--sigma-window", nargs=2, metavar=("LO", "HI"), help="apply --rho only for LO <= sigma <= HI"
    )
    parser.add_argument("--seeds", default="0-63", help="seeds, e.g. 0-63 or 1,5,9 (default: %(default)s)")
    parser.add_argument(
        "--class", dest="class_label", type=int, default=None, metavar="K",
        help="class label of every sample (conditional models; default: drawn per seed)",
    )  # fmt: skip
    out = parser.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", type=Path, metavar="PNG", help="write one image grid")
    out.add_argument("--outdir", type=Path, metavar="DIR", help="write one PNG per seed (000123.png)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per batch (default: %(default)s)")
    add_conditioning_options(parser, default_guidance=None)
    add_storage(parser)


def run(args: argparse.Namespace) -> int:
    from skiptune.devices import resolve_device
    from skiptune.nets.registry import load_model  # heavy imports after argument checks
    from skiptune.sampling import bind_conditioning
    from skiptune.skips import skip_tuning

    seeds = parse_int_list(args.seeds, what="seed")
    for seed in (min(seeds), max(seeds)):
        check_seed_range(seed, 1, "seed", "--seeds")
    SAMPLERS.get(args.sampler).steps_for_nfe(args.nfe)  # a bad NFE fails before loading the model
    if args.sigma_window and not args.rho:
        raise SkiptuneError("--sigma-window needs --rho (a tuned pair brings its own window)")
    if args.study is not None and not args.tuned:
        raise SkiptuneError(f"--study {args.study!r} picks the tuned answer: add --tuned")
    _check_outputs(args)  # before sampling: a bad --out must not cost the whole run
    from_study = args.tuned and args.prompts is None  # the tuned study's own prompts and guidance
    if from_study and (args.guidance is not None or args.negative_prompt):
        raise SkiptuneError("--guidance/--negative-prompt need --prompts FILE (with --tuned: or neither)")
    conditioning = None if from_study else conditioning_from_args(args)
    device = resolve_device(args.device)
    loaded = load_model(args.model, device=device)
    schedule, study_conditioning = _schedule(args, loaded.name)
    if from_study:
        conditioning = study_conditioning
    _note_empty_window(schedule, loaded.net, args.sampler, args.nfe)
    net = bind_conditioning(loaded.net, conditioning, device=device)
    images = []
    with skip_tuning(net, schedule):  # type: ignore[arg-type]
        batches = generate_images(
            net, sampler=args.sampler, nfe=args.nfe, seeds=seeds, batch_size=args.batch_size,
            device=device, class_labels=args.class_label,
        )  # fmt: skip
        done = 0
        for batch in batches:
            batch = batch.cpu()
            if args.outdir is not None:
                _write_pngs(batch, seeds[done : done + len(batch)], args.outdir)
            else:
                images.append(batch)
            done += len(batch)
    if args.out is not None:
        _save(_grid(torch.cat(images)), args.out)
    where = args.out if args.out is not None else args.outdir
    rho = "untuned" if schedule.is_identity else f"rho=({schedule.rho_bottom:g}, {schedule.rho_top:g})"
    if schedule.sigma_window is not None and not schedule.is_identity:
        rho += f" for sigma in [{schedule.sigma_window[0]:.4g}, {schedule.sigma_window[1]:.4g}]"
    print(f"wrote {len(seeds)} samples ({args.sampler}, NFE {args.nfe}, {rho}) to {where}")
    return 0


def _schedule(
    args: argparse.Namespace, model_name: str
) -> tuple[SkipSchedule, Conditioning | None]:
    """The skip schedule to sample with, and (with --tuned) the study's prompts and guidance."""
    if args.tuned:
        from skiptune.search.query import best_coefficients
        from skiptune.search.study import StudySpec
        from skiptune.storage import open_storage

        storage = open_storage(storage_url(args), read_only=True)
        best = best_coefficients(storage, model_name, args.nfe, args.sampler, study_name=args.study)
        spec = StudySpec.from_user_attrs(
            storage.get_study_user_attrs(storage.get_study_id_from_name(best.study_name))
        )
        evidence = (
            f"held-out gain {100 * best.gain:+.2f}% +- {100 * best.gain_se:.2f}% "
            f"over {best.holdout_samples} samples"
            if best.validated and best.gain is not None and best.gain_se is not None
            else "unvalidated: search seeds only"
        )
        where = (
            f", sigma window [{best.sigma_window[0]:.4g}, {best.sigma_window[1]:.4g}]"
            if best.sigma_window is not None
            else ""
        )
        print(f"tuned pair of {best.study_name}: status {best.status}{where} ({evidence})")
        conditioning = spec.objective.conditioning if spec is not None else None
        return SkipSchedule(best.rho_bottom, best.rho_top, best.sigma_window), conditioning
    if args.rho:
        rb, rt = parse_float_pair(args.rho, what="--rho")
        window = parse_float_pair(args.sigma_window, what="--sigma-window") if args.sigma_window else None
        return SkipSchedule(rb, rt, window), None
    return SkipSchedule(), None


def _note_empty_window(schedule: SkipSchedule, net: torch.nn.Module, sampler: str, nfe: int) -> None:
    """Say so when a window holds none of the sampler's noise levels: the images are the untuned ones."""
    from skiptune.sampling.levels import evaluated_sigmas, levels_in_window

    if schedule.sigma_window is None or schedule.is_identity:
        return
    levels = evaluated_sigmas(net, sampler, nfe)
    if not levels_in_window(schedule.sigma_window, levels):
        lo, hi = schedule.sigma_window
        shown = ", ".join(f"{v:.4g}" for v in levels)
        print(f"note: sigma window [{lo:.4g}, {hi:.4g}] holds none of the noise levels {sampler} evaluates "
              f"the network at for NFE {nfe} ({shown}): these are the untuned images")  # fmt: skip


def _to_pil(image: np.ndarray):  # [H, W, C] uint8 -> PIL image
    from PIL import Image

    if image.shape[2] == 1:
        return Image.fromarray(image[:, :, 0], "L")
    if image.shape[2] == 3:
        return Image.fromarray(image, "RGB")
    raise SkiptuneError(f"cannot write {image.shape[2]}-channel images as PNG; expected 1 or 3 channels")


def _check_outputs(args: argparse.Namespace) -> None:
    from skiptune.io import check_output_dir, check_output_path

    if args.out is not None:
        check_output_path(args.out, what="the image grid (--out)", suffixes=IMAGE_FORMATS)
    else:
        check_output_dir(args.outdir, what="the image folder (--outdir)")


def _write_image(image: np.ndarray, path: Path, *, what: str) -> None:
    from skiptune.io import atomic_write

    pil = _to_pil(image)
    atomic_write(path, lambda f: pil.save(f, format=IMAGE_FORMATS[path.suffix.lower()]), what=what)


def _write_pngs(batch: torch.Tensor, seeds: list[int], outdir: Path) -> None:
    for seed, image in zip(seeds, batch.permute(0, 2, 3, 1).numpy()):
        _write_image(image, outdir / f"{seed:06d}.png", what="an image")


def _grid(images: torch.Tensor) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` -> one ``[rows*H, cols*W, C]`` image, row-major in seed order, black fill."""
    n, c, h, w = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = torch.zeros(rows * cols, c, h, w, dtype=torch.uint8)
    canvas[:n] = images
    return canvas.reshape(rows, cols, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, c).numpy()


def _save(image: np.ndarray, path: Path) -> None:
    _write_image(image, path, what="the image grid")
