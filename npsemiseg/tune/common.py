"""What every tune module shares: file names of an experiment, names derived from a split, the sweep defaults.

The lowest tune module (no imports from the rest of ``npsemiseg.tune``), so ``sweep``, ``results``, ``plots`` and
``export`` can all use it without importing each other.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

# Files of an experiment folder <storage>/<experiment>/ (docs/sweeps.md "Results").
JOURNAL = "optuna_journal.log"  # every split's Optuna study (optuna-dashboard opens it)
EVENTS = "trial_events.jsonl"  # trial start/end times (slot utilisation, queue/placement time)
RESULTS = "results.parquet"
HISTORY = "history.parquet"
PARETO = "pareto.parquet"
TUNE_DIR = "tune"  # the sweep's one Tune experiment (restorable with Tuner.restore)

METRIC = "val/miou"  # the primary objective (best config, ASHA)
# Objectives of --objectives: the metric each reports and the direction Optuna optimises it in.
OBJECTIVES = {"miou": ("val/miou", "max"), "ece": ("val/ece", "min"), "err_auroc": ("val/err_auroc", "max")}
SPLIT_KEY = "data.split"  # the config key that carries a trial's split (the searcher sets it)
TRAIN_TIME = "time/train_s"  # seconds a trial spent inside the training function, summed over restarts

# Sweep defaults, the one home for them: "real" (a dataset root), "demo" (synthetic data, README command 1) and
# "smoke" (CI). max_concurrent counts the whole sweep (all splits share the trial slots). num_cpus: the logical
# CPUs of the local Ray instance the demo starts (4 on any machine, so the demo plans the same everywhere).
BUDGETS: dict[str, dict[str, Any]] = {
    "real": {"trials": 32, "max_concurrent": 4, "n_startup_trials": 10, "num_cpus": None},
    "demo": {"trials": 4, "max_concurrent": 2, "n_startup_trials": 2, "num_cpus": 4},
    "smoke": {"trials": 2, "max_concurrent": 2, "n_startup_trials": 1, "num_cpus": 4, "splits": 1,
              "overrides": {"train.iters": 4, "train.eval_every": 2, "data.val_limit": 4}},
}
# The ASHA defaults when the search-space file has no ``asha`` section.
ASHA_DEFAULTS = {"reduction_factor": 2.0, "time_attr": "step"}  # grace period: a quarter of the budget
# Parameter importances are shown only for studies with at least this many full-budget (COMPLETE) trials:
# with fewer, the fANOVA/PED-ANOVA estimates are noise (a 4-trial study gave the same numbers for every split).
MIN_TRIALS_FOR_IMPORTANCE = 8

_SLUG_RE = re.compile(r"[^A-Za-z0-9._-]+")


def split_slug(split: str) -> str:
    """A file or directory name for a split name (``demo/1_8`` -> ``demo_1_8``)."""
    return _SLUG_RE.sub("_", split).strip("_")


def study_name(experiment: str, split: str) -> str:
    """The Optuna study of one split."""
    return f"{experiment}/{split}"


def sampler_seed(seed: int, split: str) -> int:
    """The TPE seed of one split's study: derived from ``--seed`` and the split name (different per split)."""
    digest = hashlib.sha256(f"{seed}:{split}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def trial_dirname(trial: Any) -> str:
    """Short Tune trial directory names (the params are in the results table, not the path)."""
    return f"trial_{trial.trial_id}"


def relative_to(path: str | None, root: Path) -> str | None:
    """``path`` relative to ``root`` when it lies under it (URIs and outside paths unchanged); None stays None."""
    if not path:
        return None
    if "://" in path:
        return path
    try:
        return os.path.relpath(Path(path).resolve(), root.resolve()) if Path(path).resolve().is_relative_to(
            root.resolve()) else str(path)
    except (OSError, ValueError):
        return str(path)


def resolve_under(path: str | None, root: Path) -> str | None:
    """Inverse of ``relative_to``: a relative table path back to an absolute one (URIs unchanged)."""
    if not path:
        return None
    if "://" in path or os.path.isabs(path):
        return path
    return str(root / path)
