"""Ray Tune + Optuna sweeps over NP-SemiSeg hyper-parameters: one Tuner and one TPE study per label split.

Layers: ``space`` (search-space YAML) -> ``trial`` (one trial = one Ray Train run) -> ``sweep`` (Tuners, ASHA,
resume) -> ``results`` / ``plots`` / ``export``; ``cli`` holds the scripts' argument parsing. Importing this package
does not import Ray.
"""
