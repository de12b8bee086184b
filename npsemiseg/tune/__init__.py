"""Ray Tune + Optuna sweeps over NP-SemiSeg hyper-parameters: one Tuner for all label splits, one study per split.

Layers: ``common`` (names, defaults) -> ``space`` (search-space YAML) -> ``worker`` (the timed loop in each Train
worker) -> ``trial`` (one trial = one Ray Train run) -> ``searcher`` / ``scheduler`` / ``timing`` (per-split Optuna
studies, per-split early stopping, slot times) -> ``sweep`` (the Tuner, resume) -> ``results`` / ``summary`` /
``plots`` / ``export``; ``cli`` holds the scripts' argument parsing. Importing this package does not import Ray.
"""
