"""After a sweep: each trial keeps only the checkpoint its results row points to (exports are kept apart).

Ray Train keeps ``--num-to-keep`` full-state checkpoints (model, teacher, optimiser, banks) per trial while it runs,
so that a restarted trial can continue. Once the sweep has ended they are dead weight, except the one the table
names (``checkpoint_path``: the trial's best retained one), which ``npsemiseg export`` and later fine-tuning use.
Trials that ended in ERROR keep everything: a rerun resumes them (``resume_errored``) from their latest checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from npsemiseg.tune.storage import Storage

CHECKPOINT_PREFIX = "checkpoint_"


@dataclass
class Retained:
    removed: int = 0
    freed_bytes: int = 0
    kept: int = 0
    kept_bytes: int = 0
    paths: list[str] = field(default_factory=list)  # "<trial_id>/checkpoint_*" of every removed checkpoint

    def line(self) -> str:
        mib = 1024 * 1024
        return (f"[retention] removed {self.removed} checkpoint(s), freed {self.freed_bytes / mib:.1f} MiB; kept "
                f"{self.kept} ({self.kept_bytes / mib:.1f} MiB): the one each trial's row points to")


def _name(path: str) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def prune_checkpoints(exp: Storage, df: Any, dry_run: bool = False) -> Retained:
    """Delete every ``<trial_id>/checkpoint_*`` folder of ``exp`` except each row's ``checkpoint_path``."""
    out = Retained()
    if df is None or not len(df):
        return out
    for _, row in df.iterrows():
        trial = str(row["trial_id"])
        keep = _name(row.get("checkpoint_path") or "")
        errored = row.get("status") == "ERROR"
        for d in sorted(exp.dirs(trial)):
            if not d.startswith(CHECKPOINT_PREFIX):
                continue
            size = exp.size(f"{trial}/{d}")
            if errored or d == keep:
                out.kept += 1
                out.kept_bytes += size
                continue
            if not dry_run:
                exp.delete_dir(f"{trial}/{d}")
            out.removed += 1
            out.paths.append(f"{trial}/{d}")
            out.freed_bytes += size
    return out


def apply_retention(settings: Any, df: Any) -> Retained:
    """``prune_checkpoints`` on the sweep's storage; prints and returns what it saved."""
    from npsemiseg.tune.storage import experiment_storage

    res = prune_checkpoints(experiment_storage(settings), df)
    print(res.line(), flush=True)
    return res
