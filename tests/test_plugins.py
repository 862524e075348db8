"""Plugins: a third-party package registers a model, an extractor, a reference and an image source
through the ``skiptune.plugins`` entry points and is used by the CLI and the API like the demo is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from storage_fixtures import make_search_assets

from skiptune.errors import SkiptuneError

REPO = Path(__file__).resolve().parents[1]

PLUGIN = '''
"""A third-party skiptune plugin, as a package on the path would ship it."""
import os
from pathlib import Path

import torch

from skiptune import plugins
from skiptune.objectives.data import TensorSource, fit_resolution

ROOT = Path(os.environ["THIRD_DIR"])


def _features(*, device, weights_path=None):
    from skiptune.objectives.features import create_extractor

    extractor = create_extractor(f"torchscript:{ROOT / 'features.pt'}", device=device)
    extractor.name = "third-features"
    return extractor


def _open(argument, *, resolution):
    images = torch.randint(0, 256, (int(argument), 1, 8, 8), generator=torch.Generator().manual_seed(7),
                           dtype=torch.uint8)
    return TensorSource(fit_resolution(images, resolution), description=f"third {argument}")


def register():
    plugins.register_model("third-model", ROOT / "tiny.pt")
    plugins.register_extractor("third-features", _features)
    plugins.register_reference("third-ref", ROOT / "third-ref.npz")
    plugins.register_image_source("third", _open, usage="third:N")
'''


def _distribution(site: Path, name: str, entry_points: str) -> None:
    """A minimal installed distribution (its dist-info) on a folder that goes on sys.path."""
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


@pytest.fixture(scope="module")
def third_party(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("third")
    assets = make_search_assets(root)
    assert (assets.model, assets.extractor) == (root / "tiny.pt", root / "features.pt")
    site = root / "site"
    site.mkdir()
    (site / "thirdparty_skiptune.py").write_text(PLUGIN)
    _distribution(site, "thirdparty_skiptune", "[skiptune.plugins]\nthird = thirdparty_skiptune:register\n")
    _distribution(site, "broken_skiptune", "[skiptune.plugins]\nbroken = no_such_module_here:register\n")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(site)]),
        "THIRD_DIR": str(root),
        "OMP_NUM_THREADS": "1",
    }
    return root, env


def _skiptune(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "skiptune", *argv], env=env, capture_output=True, text=True, timeout=300
    )


def test_third_party_plugin_works_through_the_cli(third_party: tuple[Path, dict[str, str]]) -> None:
    root, env = third_party
    out = str(root / "third-ref.npz")
    stats = _skiptune(env, "stats", "--source", "third:40", "--extractor", "third-features", "--out", out,
                      "--device", "cpu", "--no-cache", "--json")  # fmt: skip
    assert stats.returncode == 0, stats.stderr
    info = json.loads(stats.stdout)
    assert (info["extractor"], info["count"], info["feature_dim"]) == ("third-features", 40, 6)
    # the broken plugin is named in a warning; the other plugins (and the demo) still load
    assert "plugin 'broken'" in stats.stderr and "no_such_module_here" in stats.stderr

    run = _skiptune(env, "eval", "--model", "third-model", "--sampler", "euler", "--nfe", "2",
                    "--extractor", "third-features", "--reference", "third-ref", "--n-samples", "8",
                    "--rungs", "4,8", "--device", "cpu", "--batch-size", "4", "--no-progress",
                    "--json")  # fmt: skip
    assert run.returncode == 0, run.stderr
    record = json.loads(run.stdout)
    assert record["model"] == "third-model" and record["objective"]["extractor"] == "third-features"
    assert [r["samples"] for r in record["results"]] == [4, 8]
    assert all(r["distance"] > 0 for r in record["results"])

    helps = _skiptune(env, "eval", "--help").stdout + _skiptune(env, "stats", "--help").stdout
    for name in ("third-model", "third-features", "third-ref", "third:N", "demo", "fmnist-classifier"):
        assert name in helps, name


def test_third_party_plugin_works_through_the_api(third_party: tuple[Path, dict[str, str]]) -> None:
    root, env = third_party
    code = textwrap.dedent(
        f"""
        import warnings
        warnings.simplefilter("ignore")  # the broken plugin's warning is checked through the CLI
        from pathlib import Path
        from skiptune import load_model, register_model
        from skiptune.objectives.data import open_source
        from skiptune.objectives.features import create_extractor
        from skiptune.objectives.reference import resolve_reference
        from skiptune.plugins import MODELS

        root = Path({str(root)!r})
        assert load_model("third-model").source == root / "tiny.pt"
        assert create_extractor("third-features").feature_dim == 6
        assert resolve_reference("third-ref") == root / "third-ref.npz"
        source = open_source("third:5", resolution=12)
        assert len(source) == 5 and next(source.batches(5)).shape == (5, 1, 12, 12)
        assert {{"demo", "third-model"}} <= set(MODELS.names())
        register_model("demo", root / "tiny.pt", replace=True)  # the user's registration wins
        assert load_model("demo").source == root / "tiny.pt"
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_unknown_names_give_one_line_listing_the_registered_ones(tmp_path: Path) -> None:
    from skiptune.nets.registry import load_model
    from skiptune.objectives.data import open_source
    from skiptune.objectives.features import create_extractor
    from skiptune.objectives.reference import load_reference

    with pytest.raises(SkiptuneError, match=r"unknown feature extractor 'nope'; expected one of: .*fmnist"):
        create_extractor("nope")
    with pytest.raises(SkiptuneError, match=r"neither a registered model \(demo, demo-latent\)"):
        load_model("nope")
    with pytest.raises(SkiptuneError, match=r"registered names: demo\)"):
        load_reference(str(tmp_path / "nope.npz"))
    with pytest.raises(SkiptuneError, match=r"registered source \(fmnist:train\|fmnist:test\)"):
        open_source("nope:train")
    done = subprocess.run(
        [sys.executable, "-m", "skiptune", "stats", "--source", "fmnist:test", "--extractor", "nope",
         "--out", str(tmp_path / "x.npz")],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "skiptune stats: error: unknown feature extractor 'nope'; expected one of: dinov2-vit-l-14, "
        "fmnist-classifier, inception-v3-compat, torchscript"
    ]


def test_registration_checks_names() -> None:
    from skiptune import plugins

    with pytest.raises(ValueError, match="model 'demo' is already registered"):
        plugins.register_model("demo", "/elsewhere.pt")
    with pytest.raises(SkiptuneError, match="image source prefix 'c'"):
        plugins.register_image_source("c", lambda argument, *, resolution: None, usage="c:X")  # type: ignore
