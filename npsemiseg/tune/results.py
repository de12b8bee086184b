"""The sweep's results: one row per trial (Parquet + CSV) and the per-report history, with their metadata.

Paths in the tables are relative to the experiment folder (URIs stay URIs), "no error" is null, and a history row
names a checkpoint only while it exists (retention deletes all but ``--num-to-keep`` per trial). Each row carries
what is needed to reproduce and join it: the recipe seed, the sampler seed, the split's checksum, the Optuna trial
number (``optuna_trial``, in study ``<experiment>/<split>``), start and end time, the package version and the git
commit. Costs come from the time a trial trained (``train_time_s``, measured inside the training function and
summed over restores and retries); ``placement_s`` (holding a slot without training: worker start-up, placement
groups, node start-up) and ``queued_s`` (suggested but waiting for a slot) are reported beside them.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from npsemiseg.errors import UserError, one_line
from npsemiseg.fileio import atomic_path
from npsemiseg.tune.common import (
    HISTORY,
    METRIC,
    PARETO,
    RESULTS,
    SPLIT_KEY,
    TRAIN_TIME,
    relative_to,
    sampler_seed,
    study_name,
)

# the semi-supervised diagnostics (docs/training.md) where a trial reports them: pseudo-label coverage/accuracy,
# the effective unsupervised weight and threshold, teacher vs student mIoU
SEMI_COLUMNS = ("train/pl_coverage", "train/pl_accuracy", "train/unsup_weight", "train/conf_threshold",
                "val/teacher_miou", "val/student_miou")
HISTORY_COLUMNS = ("training_iteration", "step", "val/miou", "val/ece", "val/err_auroc", "val/pavpu",
                   *SEMI_COLUMNS, "checkpoint_path", TRAIN_TIME)


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def git_commit() -> str | None:
    """The commit of the checkout npsemiseg is imported from, or None (installed package, no git)."""
    repo = Path(__file__).resolve().parents[2]
    if not (repo / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def split_checksums(base: Any, splits: list[str]) -> dict[str, str | None]:
    """sha256 of each split's id lists (what the trials train on), or None when the data cannot be read here."""
    from npsemiseg.config import apply_overrides
    from npsemiseg.data.build import open_tree, select_split

    out: dict[str, str | None] = {}
    bad = (UserError, OSError, ValueError, KeyError)  # the table is still written, with a null checksum
    try:
        tree = open_tree(base)
    except bad:
        return dict.fromkeys(splits)
    for s in splits:
        try:
            out[s] = select_split(apply_overrides(base, {SPLIT_KEY: s}), tree).info.checksum
        except bad:
            out[s] = None
    return out


def study_trials(journal: Path, experiment: str, splits: list[str]) -> dict[str, Any]:
    """``{Ray trial id: Optuna FrozenTrial}`` over every split's study in the journal."""
    if not journal.is_file():
        return {}
    import optuna

    from npsemiseg.tune.searcher import journal_storage

    storage = journal_storage(journal)
    out = {}
    for s in splits:
        try:
            study = optuna.load_study(study_name=study_name(experiment, s), storage=storage)
        except KeyError:
            continue
        for t in study.get_trials(deepcopy=False):
            if "ray_trial_id" in t.user_attrs:
                out[t.user_attrs["ray_trial_id"]] = t
    return out


def pick_checkpoint(hist: pd.DataFrame) -> str | None:
    """The retained checkpoint reported with the best val/miou, else the latest retained one (history paths that
    retention deleted are already null)."""
    if hist.empty or "checkpoint_path" not in hist:
        return None
    h = hist[hist["checkpoint_path"].notna()]
    if h.empty:
        return None
    if METRIC in h and h[METRIC].notna().any():
        return str(h.loc[h[METRIC].idxmax(), "checkpoint_path"])
    return str(h["checkpoint_path"].iloc[-1])


def clean_history(hist: pd.DataFrame, exp_dir: Path, scheme: str = "") -> pd.DataFrame:
    """Keep the history columns; checkpoint paths relative to ``exp_dir``, null where retention deleted them.

    With remote storage (``scheme`` like "s3") Ray reports paths without the scheme: they are turned back into
    URIs and not checked."""
    h = hist[[c for c in HISTORY_COLUMNS if c in hist.columns]].copy()
    if "checkpoint_path" in h:
        def fix(p: Any) -> str | None:
            if not isinstance(p, str) or not p:
                return None
            if scheme:
                return p if "://" in p else f"{scheme}://{p}"
            return relative_to(p, exp_dir) if os.path.exists(p) else None
        h["checkpoint_path"] = pd.Series([fix(p) for p in h["checkpoint_path"]], index=h.index, dtype=object)
    return h


def drop_checkpoints(hist: pd.DataFrame, removed: list[str]) -> pd.DataFrame:
    """``hist`` with null checkpoint paths where retention deleted the checkpoint (``removed``: "<trial>/<name>")."""
    if hist.empty or "checkpoint_path" not in hist or not removed:
        return hist
    gone = set(removed)

    def keep(p: Any) -> Any:
        return None if isinstance(p, str) and "/".join(p.rstrip("/").split("/")[-2:]) in gone else p

    hist = hist.copy()
    hist["checkpoint_path"] = pd.Series([keep(p) for p in hist["checkpoint_path"]], index=hist.index, dtype=object)
    return hist


def trial_row(settings: Any, result: Any, ctx: dict[str, Any]) -> tuple[dict, pd.DataFrame]:
    """One results row and the trial's history frame from a Tune ``Result``; ``ctx`` holds the sweep-wide facts
    (optuna trials, trial times, checksums, version)."""
    metrics = dict(result.metrics or {})
    config = dict(result.config or metrics.get("config") or {})
    trial_id = str(metrics.get("trial_id") or Path(result.path).name.removeprefix("trial_"))
    split = str(config.get(SPLIT_KEY, ""))
    exp_dir = settings.experiment_dir
    raw = result.metrics_dataframe if result.metrics_dataframe is not None else pd.DataFrame()
    hist = clean_history(raw, exp_dir, settings.storage_uri.split("://")[0] if settings.remote else "")
    budget = settings.budget
    last_step = _float(metrics.get("step", hist["step"].iloc[-1] if "step" in hist and len(hist) else 0))
    last_step = 0 if math.isnan(last_step) else int(last_step)
    miou = hist[METRIC] if METRIC in hist else pd.Series(dtype=float)
    train_s = _float(metrics.get(TRAIN_TIME))
    train_s = 0.0 if math.isnan(train_s) else train_s
    times = ctx["times"].get(trial_id)
    slot_s = times.slot_s if times else math.nan
    ot = ctx["optuna"].get(trial_id)
    asked = ot.datetime_start.timestamp() if ot is not None and ot.datetime_start else None
    res = settings.resources
    full = last_step >= budget and result.error is None
    row: dict[str, Any] = {
        "experiment": settings.experiment,
        "split": split,
        "split_checksum": ctx["checksums"].get(split),
        "trial_id": trial_id,
        "optuna_trial": int(ot.number) if ot is not None else None,
        "optuna_state": ot.state.name if ot is not None else None,
        "status": "ERROR" if result.error is not None else ("COMPLETE" if full else "STOPPED"),
        "full_budget": bool(full),
        "iterations": last_step,
        "budget": budget,
        "reports": len(hist),
        "best_miou": float(miou.max()) if miou.notna().any() else math.nan,
        "best_step": int(hist.loc[miou.idxmax(), "step"]) if miou.notna().any() and "step" in hist else -1,
        "last_miou": _float(metrics.get("val/miou")),
        "last_ece": _float(metrics.get("val/ece")),
        "last_err_auroc": _float(metrics.get("val/err_auroc")),
        "last_pavpu": _float(metrics.get("val/pavpu")),
        "last_pl_coverage": _float(metrics.get("train/pl_coverage")),
        "last_pl_accuracy": _float(metrics.get("train/pl_accuracy")),
        "seed": int(config.get("seed", settings.base.seed)),
        "sampler_seed": sampler_seed(settings.seed, split),
        "start_time": _iso(times.first_start if times else None),
        "end_time": _iso(times.last_end if times else None),
        "attempts": times.attempts if times else 0,
        "train_time_s": round(train_s, 2),
        "slot_time_s": round(slot_s, 2),
        "placement_s": round(max(0.0, slot_s - train_s), 2) if not math.isnan(slot_s) else math.nan,
        "queued_s": round(max(0.0, times.first_start - asked), 2) if times and asked and times.first_start
        else math.nan,
        "worker_hours": train_s * res.workers / 3600.0,
        "cpu_hours": train_s * res.workers * res.cpus_per_worker / 3600.0,
        "gpu_hours": train_s * res.gpus_per_trial / 3600.0,
        "checkpoint_path": pick_checkpoint(hist),
        "trial_path": relative_to(str(result.path), exp_dir),
        "error": None if result.error is None else one_line(result.error)[:300],
        "package_version": ctx["version"],
        "git_commit": ctx["commit"],
    }
    for key in settings.space.keys:
        row[key] = config.get(key)
    hist.insert(0, "trial_id", trial_id)
    hist.insert(0, "split", split)
    return row, hist


STATIC_CONTEXT = ("checksums", "version", "commit")  # the parts of sweep_context that a sweep never changes


def sweep_context(settings: Any, slots: int, static: dict[str, Any] | None = None) -> dict[str, Any]:
    """The facts every row needs, gathered once per table write (``static``: ``STATIC_CONTEXT`` from an earlier
    call, not recomputed)."""
    import npsemiseg
    from npsemiseg.tune.timing import read_events, trial_times, utilisation

    if static is None:
        static = {"checksums": split_checksums(settings.base, settings.splits), "version": npsemiseg.__version__,
                  "commit": git_commit()}
    events = read_events(settings.events_path)
    return {
        "optuna": study_trials(settings.journal_path, settings.experiment, settings.splits),
        "times": trial_times(events),
        "utilisation": utilisation(events, slots),
        **static,
    }


def metadata(settings: Any, ctx: dict[str, Any]) -> dict[str, Any]:
    """What a table needs to be read without the sweep's settings (plots, summary, export)."""
    return {
        "experiment": settings.experiment, "params": settings.space.keys,
        "param_specs": [{"key": p.key, "type": p.type, "log": p.log, "low": p.low, "high": p.high,
                         "choices": list(p.choices)} for p in settings.space.params],
        "splits": settings.splits, "objectives": list(settings.objectives), "metric": METRIC,
        "seed": settings.seed, "sampler_seeds": {s: sampler_seed(settings.seed, s) for s in settings.splits},
        "budget": settings.budget, "slot_utilisation": ctx["utilisation"], "package_version": ctx["version"],
        "git_commit": ctx["commit"], "journal": settings.journal_path.name,
    }


def collect(settings: Any, grid: Any, slots: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Rows, history and metadata of the sweep's ``ResultGrid`` (plus importances from the studies)."""
    from npsemiseg.tune.summary import importances

    ctx = sweep_context(settings, slots or settings.max_concurrent)
    rows, hists = [], []
    for result in grid:
        row, hist = trial_row(settings, result, ctx)
        rows.append(row)
        hists.append(hist)
    df = pd.DataFrame(rows)
    hist = pd.concat(hists, ignore_index=True) if hists else pd.DataFrame()
    meta = metadata(settings, ctx)
    meta["importances"] = importances(settings.journal_path, settings.experiment, settings.splits,
                                      settings.multi_objective)
    return df, hist, meta


def write_table(df: pd.DataFrame, path: Path, meta: dict[str, Any] | None = None) -> None:
    """Parquet (with ``meta`` as JSON schema metadata) + a CSV beside it, both written atomically."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    if meta:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"npsemiseg": json.dumps(meta)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    with atomic_path(path.with_suffix(".csv")) as tmp:
        df.to_csv(tmp, index=False)


def write_results(exp_dir: Path, df: pd.DataFrame, hist: pd.DataFrame, meta: dict[str, Any],
                  plots: bool = True) -> None:
    """results.parquet/.csv, history.parquet, pareto.* (multi-objective) and the plots (unless ``plots=False``):
    the one place a sweep's tables are written."""
    from npsemiseg.tune.plots import write_plots
    from npsemiseg.tune.summary import pareto_front

    write_table(df, exp_dir / RESULTS, meta)
    if not hist.empty:
        write_table(hist, exp_dir / HISTORY, meta)
    if len(meta.get("objectives", [])) > 1 and len(df):
        write_table(pareto_front(df, tuple(meta["objectives"])), exp_dir / PARETO, meta)
    if plots:
        write_plots(exp_dir, df, hist, meta)


def read_results(exp_dir: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Load an experiment's results table and its metadata (params, splits, objectives)."""
    path = Path(exp_dir) / RESULTS
    if not path.is_file():
        raise UserError(f"{path}: no results table (run the sweep first, or check --experiment)")
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(b"npsemiseg", b"{}")
    return table.to_pandas(), json.loads(raw)
