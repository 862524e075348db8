"""What the README guarantees about common random numbers, checked as stated.

1. Everything skiptune feeds the network for sample i (initial noise, class label, churn noise,
   sigmas) is bit-identical for any batch size or split of the seeds: with a network that computes
   each sample on its own, every call's inputs and the images are bit-identical.
2. With the real demo model the outputs differ only by float rounding that depends on the batch size:
   images within one uint8 level, and the Fréchet distance moves far less than its seed noise.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
from helpers import tiny_precond

from skiptune.sampling import generate_images
from skiptune.sampling.samplers import HeunSettings


class _OneAtATime(torch.nn.Module):
    """The wrapped denoiser applied to each sample alone, recording every call's inputs per seed."""

    def __init__(self, net: torch.nn.Module, seeds: list[int]) -> None:
        super().__init__()
        self.net = net
        self.seeds = seeds  # in the order generate_images draws them
        self.calls: dict[int, list[tuple[torch.Tensor, ...]]] = defaultdict(list)
        self.done = 0
        for name in ("img_resolution", "img_channels", "label_dim", "sigma_min", "sigma_max"):
            setattr(self, name, getattr(net, name))

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        sigma = sigma.reshape(-1).expand(x.shape[0])
        outs = []
        for k in range(x.shape[0]):
            seed = self.seeds[self.batch_start + k]
            label = None if class_labels is None else class_labels[k : k + 1]
            self.calls[seed].append(
                (x[k].clone(), sigma[k].clone(), *(() if label is None else (label.clone(),)))
            )
            outs.append(self.net(x[k : k + 1], sigma[k : k + 1], label))
        return torch.cat(outs)

    batch_start = 0


def _run(
    net: torch.nn.Module, seeds: list[int], batch: int
) -> tuple[torch.Tensor, dict[int, list[tuple[torch.Tensor, ...]]]]:
    recorder = _OneAtATime(net, seeds)
    images = []
    churn = HeunSettings(s_churn=10.0, s_min=0.05, s_max=50.0)  # stochastic: per-step noise too
    for start in range(0, len(seeds), batch):
        recorder.batch_start = start
        chunk = seeds[start : start + batch]
        images += list(
            generate_images(
                recorder, sampler="heun", nfe=5, seeds=chunk, batch_size=batch, device="cpu", settings=churn
            )
        )
    return torch.cat(images), recorder.calls


def test_network_inputs_are_bit_identical_for_any_batch_size() -> None:
    net = tiny_precond("SongUNet", label_dim=4, img_resolution=8, img_channels=1, seed=2)
    seeds = list(range(100, 112))
    reference_images, reference_calls = _run(net, seeds, batch=1)
    for batch in (5, 12):
        images, calls = _run(net, seeds, batch=batch)
        assert torch.equal(images, reference_images)
        for seed in seeds:
            assert len(calls[seed]) == len(reference_calls[seed]) == 5
            for got, want in zip(calls[seed], reference_calls[seed]):
                assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


@pytest.fixture(scope="module")
def demo() -> tuple[torch.nn.Module, object, object]:
    from skiptune.nets.registry import load_model
    from skiptune.objectives.features import create_extractor
    from skiptune.objectives.reference import load_reference

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return load_model("demo", device="cpu").net, create_extractor("fmnist-classifier"), load_reference("demo")


def _fd(extractor, reference, images: torch.Tensor) -> float:  # type: ignore[no-untyped-def]
    from skiptune.objectives.frechet import FeatureStats, frechet_distance

    stats = FeatureStats(extractor.feature_dim)
    stats.update(extractor(images))
    return frechet_distance(stats.mean(), stats.cov(), reference.mu, reference.sigma)


def _images(net: torch.nn.Module, seeds: range, batch: int) -> torch.Tensor:
    return torch.cat(
        list(generate_images(net, sampler="heun", nfe=3, seeds=seeds, batch_size=batch, device="cpu"))
    )


def test_demo_outputs_within_rounding_and_distance_change_far_below_seed_noise(demo) -> None:  # type: ignore[no-untyped-def]
    net, extractor, reference = demo
    n = 32
    one = _images(net, range(n), batch=1)
    whole = _images(net, range(n), batch=n)
    split = torch.cat([_images(net, range(0, 12), batch=5), _images(net, range(12, n), batch=20)])
    other_seeds = _images(net, range(n, 2 * n), batch=n)
    for images in (whole, split):
        assert (images.int() - one.int()).abs().max() <= 1  # float rounding: at most one level
    fd_one, fd_whole, fd_split = (_fd(extractor, reference, x) for x in (one, whole, split))
    seed_noise = abs(_fd(extractor, reference, other_seeds) - fd_whole)
    assert max(abs(fd_whole - fd_one), abs(fd_split - fd_one)) < 0.01 * seed_noise
