"""``skiptune analyze``: per-sigma pixel and feature losses of tuned pairs vs (1, 1), and a sigma window."""

from __future__ import annotations

import argparse
from typing import Any

from skiptune.cli.common import add_json, add_storage, parse_float_pair, print_json, storage_url
from skiptune.errors import SkiptuneError

HELP = "pixel and feature losses per sigma of tuned pairs vs (1, 1); suggests a sigma window"
DESCRIPTION = """\
For each sigma of a grid, denoise the same real images with the same noise (common random numbers)
under the baseline (1, 1) and each tuned pair, and report tuned / baseline ratios (with paired
standard errors over images) of the pixel loss E||D(x + sigma n; sigma) - x||^2 (raw and EDM-weighted)
and of the feature loss E||phi(D(x + sigma n; sigma)) - phi(x)||^2 in the objective's extractor phi.
The sigmas where the feature ratio is significantly below 1 are suggested as a sigma window, with the
`skiptune eval` commands that check it on held-out seeds.

examples:
  skiptune analyze --model demo --rho 0.485 0.328 --nfe 5 --out analysis.png
  skiptune analyze --model demo --nfe 9 --tuned --storage sqlite:///skiptune.db --json
  skiptune analyze --model net.pkl --rho 0.8 1.05 --rho 0.9 1.0 --images cifar10-test/ \\
      --extractor inception-v3-compat --reference cifar10-32x32.npz --device cuda --out a.png
"""
CHECK_SEED_BASE = 2_000_000_000  # a seed block no study uses (search: 0.., validation: +1e9)
CHECK_SAMPLES = 10_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from skiptune.cli.stats_cmd import add_extractor_weights
    from skiptune.objectives.features import extractor_choices
    from skiptune.sampling import SAMPLERS

    parser.add_argument(
        "--model", required=True, metavar="M", help="registered model name or checkpoint path"
    )
    parser.add_argument(
        "--rho", nargs=2, action="append", default=[], metavar=("RB", "RT"),
        help="a pair (rho_bottom, rho_top) to compare with (1, 1); repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--tuned", action="store_true",
        help="also compare the recommended pair of the study for (model, sampler, --nfe) in --storage",
    )  # fmt: skip
    parser.add_argument(
        "--study", default=None, metavar="NAME", help="the study to take it from (implies --tuned)"
    )
    parser.add_argument(
        "--search-best", action="store_true",
        help="with --tuned: the search's best candidate instead of the recommendation "
        "(e.g. of a no-gain study)",
    )  # fmt: skip
    parser.add_argument(
        "--nfe", type=int, default=None, help="NFE of the study, and of the printed eval commands"
    )
    parser.add_argument(
        "--sampler", default="heun", choices=SAMPLERS.names(), help="sampler (default: %(default)s)"
    )
    add_storage(parser)
    parser.add_argument(
        "--images", default=None, metavar="SRC",
        help="real images: fmnist:test|fmnist:train|FOLDER|FILE.npz|IDX, read as `skiptune stats` reads "
        "them (default for the demo model: fmnist:test)",
    )  # fmt: skip
    parser.add_argument(
        "--extractor", default=None, metavar="NAME",
        help=f"feature extractor phi (default: the study's, fmnist-classifier for the demo); one of: "
        f"{', '.join(extractor_choices())}",
    )  # fmt: skip
    add_extractor_weights(parser)
    parser.add_argument(
        "--reference", default=None, metavar="PATH",
        help="reference statistics named in the printed eval commands "
        "(default: the study's, demo for the demo)",
    )  # fmt: skip
    parser.add_argument(
        "--sigmas", default=None, metavar="S,S|LO:HI:N",
        help="noise levels (default: 24 log-spaced over the sampler's range, 0.002..80 for EDM nets)",
    )  # fmt: skip
    parser.add_argument("--n-images", type=int, default=2000, help="real images (default: %(default)s)")
    parser.add_argument(
        "--seed", type=int, default=0, help="noise of image i is seeded seed + i (default: %(default)s)"
    )
    parser.add_argument(
        "--z", type=float, default=2.0, help="standard errors for 'significant' (default: %(default)s)"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--out", default=None, metavar="PNG", help="write the ratio plot here")
    add_json(parser)


def run(args: argparse.Namespace) -> int:
    from skiptune.analysis import analyze, first_images, parse_sigmas
    from skiptune.devices import resolve_device
    from skiptune.nets.registry import load_model
    from skiptune.objectives.data import open_source
    from skiptune.objectives.features import create_extractor
    from skiptune.skips import SkipSchedule

    schedules = [SkipSchedule(*parse_float_pair(pair, what="--rho")) for pair in args.rho]
    sigmas = parse_sigmas(args.sigmas) if args.sigmas else None
    tuned = args.tuned or args.study is not None
    if args.batch_size < 1 or args.n_images < 2:
        raise SkiptuneError(
            f"--batch-size {args.batch_size} must be >= 1 and --n-images {args.n_images} >= 2"
        )
    if args.search_best and not tuned:
        raise SkiptuneError("--search-best picks a study's candidate: add --tuned --nfe N (or --study NAME)")
    if tuned and args.nfe is None:
        raise SkiptuneError("--tuned/--study needs --nfe N: the study is looked up by (model, sampler, NFE)")
    if not schedules and not tuned:
        raise SkiptuneError(
            "nothing to compare with (1, 1): give --rho RB RT (repeatable) or --tuned --nfe N"
        )
    device = resolve_device(args.device)
    loaded = load_model(args.model, device=device)
    if callable(getattr(loaded.net, "decode", None)):
        raise SkiptuneError(
            f"model {loaded.name!r} samples latents: `analyze` noises real images in the network's own "
            "space, which would need the VAE's encoder; it runs on pixel-space models only"
        )
    demo = loaded.name == "demo"
    pair = None
    if tuned:
        from skiptune.analysis.study import study_pair

        pair = study_pair(
            storage_url(args), loaded.name, args.nfe, args.sampler, study_name=args.study,
            search_best=args.search_best,
        )  # fmt: skip
        schedules.append(pair.schedule)
        if not args.json:
            print(f"analysing {pair.note}")
    extractor_name = args.extractor or (pair.extractor if pair else "fmnist-classifier" if demo else None)
    reference = args.reference or (pair.reference if pair else "demo" if demo else "REFERENCE.npz")
    source_spec = args.images or ("fmnist:test" if demo else None)
    if extractor_name is None or source_spec is None:
        raise SkiptuneError(
            "give --images SRC and --extractor NAME (defaults exist for the demo model and studies)"
        )
    extractor = create_extractor(extractor_name, device=device, weights_path=args.extractor_weights)
    source = open_source(source_spec, resolution=int(loaded.net.img_resolution))  # type: ignore[arg-type]
    images = first_images(source, args.n_images)
    result = analyze(
        loaded.net, images, schedules=schedules, extractor=extractor, sigmas=sigmas, seed=args.seed,
        batch_size=args.batch_size, device=device, z=args.z,
    )  # fmt: skip
    out = result.to_dict()
    out.update(model=loaded.name, fingerprint=loaded.fingerprint, images=source.description)
    if pair is not None:
        out["study"] = {"note": pair.note, "answer": pair.answer.to_dict()}
    levels = sampler_levels(loaded.net, args.sampler, args.nfe) if args.nfe is not None else None
    out.update(sampler=args.sampler, nfe=args.nfe, sampler_sigmas=levels)
    for comparison, record in zip(result.comparisons, out["comparisons"]):
        record["check"] = check_commands(args, loaded.name, extractor_name, reference, comparison)
        w = comparison.window
        if levels is not None and w is not None:
            record["sampler_sigmas_in_window"] = [v for v in levels if w.lo <= v <= w.hi]
    if args.out:
        from skiptune.analysis.plot import plot_analysis

        title = f"{loaded.name}: {len(images)} images of {source.description}, bands ±{args.z:g} s.e."
        out["png"] = str(plot_analysis(result, args.out, title=title))
    if args.json:
        print_json(out)
    else:
        _print_text(out, result)
    return 0


def sampler_levels(net: Any, sampler: str, nfe: int) -> list[float]:
    """The nonzero noise levels of the sampler's EDM schedule at ``nfe``: where it evaluates the net."""
    from skiptune.sampling.levels import evaluated_sigmas

    return evaluated_sigmas(net, sampler, nfe)


def check_commands(
    args: argparse.Namespace, model: str, extractor: str, reference: str, comparison: Any
) -> list[str]:
    """`skiptune eval` commands on held-out seeds: the pair in its window, the pair everywhere, (1, 1)."""
    if comparison.window is None:
        return []
    s, w = comparison.schedule, comparison.window
    nfe = str(args.nfe) if args.nfe is not None else "NFE"
    base = (
        f"skiptune eval --model {args.model} --nfe {nfe} --sampler {args.sampler} --extractor {extractor} "
        f"--reference {reference} --n-samples {CHECK_SAMPLES} --seed-base {CHECK_SEED_BASE}"
    )
    rho = f"--rho {s.rho_bottom:.6g} {s.rho_top:.6g}"
    return [f"{base} {rho} --sigma-window {w.lo:.6g} {w.hi:.6g}", f"{base} {rho}", f"{base} --rho 1 1"]


def _print_text(out: dict[str, Any], result: Any) -> None:
    from skiptune.analysis.table import format_rows

    sig = out["sigmas"]
    print(
        f"model {out['model']} ({out['fingerprint'][:12]}), {out['n_images']} images of {out['images']}, "
        f"extractor {out['extractor']}, seed {out['seed']}, "
        f"{len(sig)} sigmas in [{sig[0]:.4g}, {sig[-1]:.4g}]"
    )
    for comparison, record in zip(result.comparisons, out["comparisons"]):
        s = comparison.schedule
        print(f"\nrho = ({s.rho_bottom:.6g}, {s.rho_top:.6g}) vs (1, 1): tuned / baseline ± s.e.")
        print(format_rows(comparison.rows))
        print(_summary(comparison.rows, out["z"]))
        if comparison.window is None:
            print(
                f"no sigma with the feature loss lower by more than {out['z']:g} s.e.: no window to suggest"
            )
            continue
        w = comparison.window
        others = [r for r in comparison.runs if r != w]
        if others:
            where = ", ".join(f"[{r.lo:.4g}, {r.hi:.4g}] (mean ratio {r.mean_ratio:.4f})" for r in others)
            print(f"feature loss also significantly lower, less in total, at sigma {where}")
        print(
            f"suggested sigma window: [{w.lo:.6g}, {w.hi:.6g}] ({w.points} grid points, mean feature ratio "
            f"{w.mean_ratio:.4f}); check it on held-out seeds (FD of each; the NFE is the one to use it at):"
        )
        for command in record["check"]:
            print(f"  {command}")
        if "sampler_sigmas_in_window" in record:
            inside = ", ".join(f"{v:.4g}" for v in record["sampler_sigmas_in_window"]) or "none"
            levels = ", ".join(f"{v:.4g}" for v in out["sampler_sigmas"])
            print(
                f"  {out['sampler']} at NFE {out['nfe']} evaluates the net at sigma {levels}; "
                f"inside the window: {inside}"
            )
    if "png" in out:
        print(f"\nwrote {out['png']}")


def _summary(rows: list[dict[str, Any]], z: float) -> str:
    """Where each ratio is significantly above / below 1 (``z`` standard errors)."""

    def where(key: str, sign: int) -> str:
        sel = [r["sigma"] for r in rows if sign * (r[f"{key}_ratio"] - 1) > z * r[f"{key}_ratio_se"]]
        return f"{len(sel)}/{len(rows)}" + (f" (sigma {sel[0]:.3g}..{sel[-1]:.3g})" if sel else "")

    return (
        f"pixel loss significantly up at {where('pixel', 1)}, down at {where('pixel', -1)}; "
        f"feature loss up at {where('feature', 1)}, down at {where('feature', -1)} sigmas"
    )
