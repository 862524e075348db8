"""Objectives: Fréchet distances between a sampler's images and real images, in a feature space.

    features.py   extractors by name (EXTRACTORS, create_extractor): uint8 [N,C,H,W] -> float32 [N,D]
    frechet.py    FeatureStats (float64 streaming sums, exact merge) and frechet_distance
    reference.py  ReferenceStats: load (ours, EDM, torch-fidelity), compute + cache, check_compatible
    fid.py        FDObjective: the distance per sample-count rung for one skip schedule
    spec.py       ObjectiveSpec: the objective's one validated description (identity, stored args, build)
    data.py       Fashion-MNIST idx loader, pad_to, image sources (folders, .npz, idx)
    classifier.py the demo's Fashion-MNIST classifier (the fmnist-classifier extractor)

Nothing is imported here: torch-fidelity (imported by frechet.py) stays out of ``import skiptune``.
"""
