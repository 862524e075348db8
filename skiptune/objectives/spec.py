"""The objective's one description, validated once: identity, stored arguments and FDObjective derive from it.

``ObjectiveSpec`` names the feature extractor, the reference statistics (a registered name or absolute path,
and the sha256 of the statistics), the sample count, the rungs and the seed base. A study stores it as
``to_args()`` and hashes ``identity(...)`` into its name; a worker rebuilds it with ``from_args`` and
gets the objective with ``FDObjective.from_spec``. The identity's keys and values are a frozen wire
format: study names hash them, so existing databases find their studies only while they stay exactly as
they are.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from skiptune.errors import SkiptuneError
from skiptune.objectives.features import FeatureExtractor, extractor_name
from skiptune.objectives.reference import ReferenceStats, load_reference, resolve_reference
from skiptune.sampling.conditions import Conditioning
from skiptune.seeds import check_seed_range


def check_rungs(rungs: Sequence[int], n_samples: int | None = None) -> tuple[int, ...]:
    """Rungs as a tuple: strictly increasing sample counts >= 2, the last equal to ``n_samples``
    (default: the last rung)."""
    out = tuple(int(r) for r in rungs)
    n = out[-1] if n_samples is None and out else n_samples
    if not out or out[0] < 2 or any(b <= a for a, b in itertools.pairwise(out)) or out[-1] != n:
        example = f"{max(2, n // 5)},{n}" if n else "2000,10000"
        raise SkiptuneError(
            f"bad rungs {list(out)} for {n} samples: expected strictly increasing sample counts >= 2 "
            f"ending at n_samples, e.g. {example}"
        )
    return out


def default_rungs(n_samples: int) -> tuple[int, ...]:
    """``n_samples // 5, n_samples`` (a first look at a fifth of the samples), or the full count alone
    when a fifth is too few to rank."""
    return (n_samples // 5, n_samples) if n_samples // 5 >= 2 else (n_samples,)


@dataclass(frozen=True)
class ObjectiveSpec:
    """Everything that defines the Fréchet-distance objective of a study, except sampler and NFE.

    ``rungs`` defaults to ``(n_samples,)`` (no early look); ``extractor`` is the name
    ``create_extractor`` gives (TorchScript paths as ``pathlib`` writes them).
    """

    extractor: str
    feature_dim: int
    reference: str  # a registered reference's name, resolved on each machine, or an absolute path
    reference_sha256: str
    n_samples: int
    rungs: tuple[int, ...] = ()
    seed_base: int = 0
    conditioning: Conditioning | None = None  # prompts, negative prompt, guidance (text models only)

    def __post_init__(self) -> None:
        if self.n_samples < 2:
            raise SkiptuneError(f"bad sample count {self.n_samples}: expected an integer >= 2, e.g. 10000")
        if self.feature_dim < 1:
            raise SkiptuneError(f"bad feature dimension {self.feature_dim}: expected an integer >= 1")
        check_seed_range(self.seed_base, self.n_samples, "seed base", "--seed-base")
        object.__setattr__(self, "extractor", extractor_name(self.extractor))
        object.__setattr__(self, "rungs", check_rungs(self.rungs or (self.n_samples,), self.n_samples))

    @classmethod
    def describe(
        cls,
        extractor: FeatureExtractor,
        reference: ReferenceStats,
        *,
        reference_name: str,
        n_samples: int,
        rungs: Sequence[int] = (),
        seed_base: int = 0,
        conditioning: Conditioning | None = None,
    ) -> ObjectiveSpec:
        """The spec of an objective on this extractor and these reference statistics."""
        return cls(
            extractor=extractor.name,
            feature_dim=int(extractor.feature_dim),
            reference=reference_name,
            reference_sha256=reference.sha256,
            n_samples=n_samples,
            rungs=tuple(rungs),
            seed_base=seed_base,
            conditioning=conditioning,
        )

    def identity(self, *, sampler: str, nfe: int, settings: Mapping[str, Any]) -> dict[str, str]:
        """Everything that changes the number, as strings (not device or batch size: those never do).

        The conditioning's keys appear only for text-conditional objectives, so every earlier study keeps
        its identity (and name)."""
        conditioning = self.conditioning.identity() if self.conditioning is not None else {}
        return {
            "objective": "frechet-distance",
            "extractor": self.extractor,
            "feature_dim": str(self.feature_dim),
            "reference_sha256": self.reference_sha256,
            "n_samples": str(self.n_samples),
            "rungs": ",".join(str(r) for r in self.rungs),
            "seed_base": str(self.seed_base),
            "sampler": sampler,
            "sampler_settings": json.dumps(dict(settings), sort_keys=True, default=str),
            "nfe": str(nfe),
            **conditioning,
        }

    def to_args(self) -> dict[str, Any]:
        """How a worker rebuilds the objective (stored with the study; ``feature_dim`` is in its identity)."""
        args: dict[str, Any] = {
            "extractor": self.extractor,
            "reference_path": self.reference,
            "reference_sha256": self.reference_sha256,
            "n_samples": self.n_samples,
            "rungs": list(self.rungs),
            "seed_base": self.seed_base,
        }
        if self.conditioning is not None:
            args["conditioning"] = self.conditioning.to_dict()
        return args

    @classmethod
    def from_args(cls, args: Mapping[str, Any], *, feature_dim: int) -> ObjectiveSpec:
        """The spec ``to_args()`` stored."""
        missing = sorted({"extractor", "reference_path", "reference_sha256", "n_samples"} - set(args))
        if missing:
            raise SkiptuneError(
                f"stored objective arguments lack {', '.join(missing)}; "
                "recreate the study with `skiptune study create`"
            )
        return cls(
            extractor=str(args["extractor"]),
            feature_dim=int(feature_dim),
            reference=str(args["reference_path"]),
            reference_sha256=str(args["reference_sha256"]),
            n_samples=int(args["n_samples"]),
            rungs=tuple(int(r) for r in args.get("rungs") or ()),
            seed_base=int(args.get("seed_base", 0)),
            conditioning=(
                Conditioning.from_dict(args["conditioning"])
                if isinstance(args.get("conditioning"), dict)
                else None
            ),
        )

    def checked_reference(self) -> ReferenceStats:
        """The reference statistics on this machine, refused unless their sha256 is the spec's."""
        path, expected = resolve_reference(self.reference), self.reference_sha256
        if not path.is_file():
            raise SkiptuneError(
                f"the objective needs reference statistics {str(path)!r} (sha256 {expected[:12]}...), "
                "which this machine does not have; copy the same file to that path"
            )
        reference = load_reference(path)
        if reference.sha256 != expected:
            raise SkiptuneError(
                f"reference {str(path)!r} here has statistics sha256 {reference.sha256[:12]}..., the "
                f"objective was created with {expected[:12]}...; copy the study's file"
            )
        return reference
