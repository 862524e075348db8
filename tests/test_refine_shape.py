"""The refinement box's shape: length scales fitted to a study's trials, and the box they give."""

from __future__ import annotations

import numpy as np
import pytest

from skiptune.search.experiment.growth import refine_space
from skiptune.search.experiment.refine_shape import MAX_ASPECT, MIN_POINTS, aspect, length_scales
from skiptune.search.settings import ValidationSettings
from skiptune.search.space import SearchSpace


def _trials(
    scales: tuple[float, float], n: int = 20, seed: int = 0
) -> tuple[list[tuple[float, float]], list[float]]:
    """``n`` random pairs in [0.2, 1.2]^2 on a valley through (0.85, 0.99) with these length scales."""
    rng = np.random.default_rng(seed)
    points = [(float(a), float(b)) for a, b in rng.uniform(0.2, 1.2, size=(n, 2))]
    points.append((1.0, 1.0))
    distances = [
        0.25
        * float(np.exp(((a - 0.85) / scales[0]) ** 2 + ((b - 0.99) / scales[1]) ** 2 + 0.01 * rng.normal()))
        for a, b in points
    ]
    return points, distances


def test_a_band_along_rho_bottom_gives_a_long_flat_box() -> None:
    # the demo's Heun NFE 35 landscape: 0.4 along rho_bottom, 0.05 along rho_top (docs/results.md)
    points, distances = _trials((0.4, 0.05))
    scales = length_scales(points, distances, (1.0, 1.0))
    assert scales is not None and scales[0] / scales[1] >= 4
    a = aspect(scales)
    assert 2 <= a <= np.sqrt(MAX_ASPECT)
    box = refine_space(SearchSpace(), {"rho_bottom": 0.85, "rho_top": 0.99}, radius=0.1, aspect=a)
    (b0, b1), (t0, t1) = box.rho_bottom, box.rho_top
    assert (b1 - b0) * (t1 - t0) == pytest.approx(0.2 * 0.2)  # the square's area
    assert t1 - t0 <= 0.1 and t0 < 0.99 < t1  # narrow across the band, around the answer


def test_the_other_way_round_and_a_round_valley() -> None:
    points, distances = _trials((0.05, 0.4), seed=1)
    assert aspect(length_scales(points, distances, (1.0, 1.0))) <= 0.5
    points, distances = _trials((0.3, 0.3), seed=2)
    assert 0.6 <= aspect(length_scales(points, distances, (1.0, 1.0))) <= 1.7


def test_too_few_trials_keep_the_square() -> None:
    points, distances = _trials((0.4, 0.05), n=MIN_POINTS - 2)
    assert length_scales(points, distances, (1.0, 1.0)) is None and aspect(None) == 1.0
    assert refine_space(SearchSpace(), {"rho_bottom": 1.0, "rho_top": 1.0}, radius=0.1).rho_top == (0.9, 1.1)


def test_studies_stored_before_keep_the_square_box() -> None:
    old = ValidationSettings.from_dict({"n_samples": 200, "seed_base": 500, "refine_trials": 5})
    assert old.refine_shape == "square"
    new = ValidationSettings.default_for(search_samples=100, search_seed_base=0, n_trials=20)
    assert new.refine_shape == "landscape" and ValidationSettings.from_dict(new.to_dict()) == new
