"""Objectives: Fréchet distances between a sampler's images and real images, in a feature space.

    features.py   extractors by name (create_extractor; registry: skiptune.plugins.EXTRACTORS),
                  uint8 [N,C,H,W] -> float32 [N,D]
    frechet.py    FeatureStats (float64 streaming sums, exact merge) and frechet_distance
    reference.py  ReferenceStats: load (ours, EDM, torch-fidelity), compute + cache, check_compatible
    fid.py        FDObjective: the distance per sample-count rung for one skip schedule
    spec.py       ObjectiveSpec: the objective's one validated description (identity, stored args, build)
    data.py       image sources (registered PREFIX:ARG, folders, .npz, idx), pad_to, the idx reader

Nothing is imported here: torch-fidelity (imported by frechet.py) stays out of ``import skiptune``.
"""
