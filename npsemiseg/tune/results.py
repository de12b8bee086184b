"""The sweep's results: one row per trial (Parquet + CSV), the per-report history, the Pareto front, a summary.

Best configurations and the Pareto front come only from trials that ran the full budget (``full_budget``): an
ASHA-stopped trial's value was measured after fewer steps and is not comparable. Rows keep every trial anyway.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from npsemiseg.errors import UserError
from npsemiseg.fileio import atomic_path

RESULTS = "results.parquet"
HISTORY = "history.parquet"
PARETO = "pareto.parquet"
# Last-report metrics copied into each row (the names the engine reports).
LAST_METRICS = ("val/miou", "val/ece", "val/err_auroc", "val/pavpu", "val/pixel_acc")
HISTORY_COLUMNS = ("training_iteration", "step", "val/miou", "val/ece", "val/err_auroc", "val/pavpu",
                   "checkpoint_path", "time_total_s")
OBJECTIVE_COLUMNS = {"miou": ("last_miou", "max"), "ece": ("last_ece", "min"), "err_auroc": ("last_err_auroc", "max")}


def _float(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def _trials_by_path(grid: Any) -> dict[str, Any]:
    analysis = getattr(grid, "_experiment_analysis", None)
    return {str(t.path): t for t in getattr(analysis, "trials", [])}


def _pick_checkpoint(hist: pd.DataFrame, scheme: str = "") -> str:
    """The checkpoint reported with the best val/miou that still exists, else the latest existing one.

    With remote storage (``scheme`` like "s3") Ray reports paths without the scheme: they are turned back into URIs
    and not checked (retention keeps the best by val/miou, so the best one is there).
    """
    if hist.empty or "checkpoint_path" not in hist:
        return ""
    h = hist[hist["checkpoint_path"].notna() & (hist["checkpoint_path"] != "")].copy()
    if scheme:
        h["checkpoint_path"] = h["checkpoint_path"].map(lambda p: p if "://" in p else f"{scheme}://{p}")
    else:
        h = h[h["checkpoint_path"].map(lambda p: os.path.exists(str(p)))]
    if h.empty:
        return ""
    if "val/miou" in h and h["val/miou"].notna().any():
        return str(h.loc[h["val/miou"].idxmax(), "checkpoint_path"])
    return str(h["checkpoint_path"].iloc[-1])


def trial_row(settings: Any, split: str, result: Any, trial: Any, budget: int) -> tuple[dict, pd.DataFrame]:
    """One results row and the trial's history frame from a Tune ``Result`` (+ its ``Trial`` when known)."""
    metrics = dict(result.metrics or {})
    config = dict((trial.config if trial is not None else None) or metrics.get("config") or {})
    trial_id = metrics.get("trial_id") or (trial.trial_id if trial is not None else Path(result.path).name[6:])
    hist = result.metrics_dataframe if result.metrics_dataframe is not None else pd.DataFrame()
    hist = hist[[c for c in HISTORY_COLUMNS if c in hist.columns]].copy()
    budget = int(config.get("train.iters", budget))
    last_step = _float(metrics.get("step", hist["step"].iloc[-1] if "step" in hist and len(hist) else 0))
    last_step = 0 if math.isnan(last_step) else int(last_step)
    miou = hist["val/miou"] if "val/miou" in hist else pd.Series(dtype=float)
    wall = _float(metrics.get("time_total_s", 0.0))
    wall = 0.0 if math.isnan(wall) else wall
    res = settings.resources
    full = last_step >= budget and result.error is None
    row: dict[str, Any] = {
        "experiment": settings.experiment,
        "split": split,
        "trial_id": str(trial_id),
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
        "wall_time_s": wall,
        "worker_hours": wall * res.workers / 3600.0,
        "cpu_hours": wall * res.workers * res.cpus_per_worker / 3600.0,
        "gpu_hours": wall * res.gpus_per_trial / 3600.0,
        "checkpoint_path": _pick_checkpoint(hist, settings.storage_uri.split("://")[0] if settings.remote else ""),
        "trial_path": str(result.path),
        "error": "" if result.error is None else str(result.error).splitlines()[0][:300] if str(result.error) else
        type(result.error).__name__,
    }
    for key in settings.space.keys:
        row[key] = config.get(key)
    hist.insert(0, "trial_id", str(trial_id))
    hist.insert(0, "split", split)
    return row, hist


def collect(settings: Any, grids: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows and history of every split's ``ResultGrid``."""
    rows, hists = [], []
    budget = settings.base_config().train.iters
    for split, grid in grids.items():
        trials = _trials_by_path(grid)
        for result in grid:
            row, hist = trial_row(settings, split, result, trials.get(str(result.path)), budget)
            rows.append(row)
            hists.append(hist)
    df = pd.DataFrame(rows)
    hist = pd.concat(hists, ignore_index=True) if hists else pd.DataFrame()
    return df, hist


def pareto_front(df: pd.DataFrame, objectives: tuple[str, ...]) -> pd.DataFrame:
    """Non-dominated full-budget trials per split for the given objectives (e.g. ("miou", "ece"))."""
    cols = [OBJECTIVE_COLUMNS[o] for o in objectives]
    keep = []
    ok = df[df["full_budget"]] if len(df) else df
    for _, g in ok.groupby("split", sort=False):
        g = g.dropna(subset=[c for c, _ in cols])
        # Turn every objective into "larger is better".
        vals = [[(r[c] if m == "max" else -r[c]) for c, m in cols] for _, r in g.iterrows()]
        for i, (idx, _) in enumerate(g.iterrows()):
            dominated = any(
                all(b >= a for a, b in zip(vals[i], vals[j])) and any(b > a for a, b in zip(vals[i], vals[j]))
                for j in range(len(vals)) if j != i
            )
            if not dominated:
                keep.append(idx)
    return df.loc[keep].reset_index(drop=True)


def best_per_split(df: pd.DataFrame) -> pd.DataFrame:
    """The full-budget trial with the highest best val/miou of each split."""
    ok = df[df["full_budget"] & df["best_miou"].notna()]
    if ok.empty:
        return ok
    return ok.loc[ok.groupby("split", sort=False)["best_miou"].idxmax()].reset_index(drop=True)


def _atomic_write(path: Path, write: Any) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def write_table(df: pd.DataFrame, path: Path, meta: dict[str, Any] | None = None) -> None:
    """Parquet (with ``meta`` as JSON schema metadata) + a CSV beside it, both written atomically."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    if meta:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"npsemiseg": json.dumps(meta)})
    _atomic_write(path, lambda t: pq.write_table(table, t))
    _atomic_write(path.with_suffix(".csv"), lambda t: df.to_csv(t, index=False))


def write_results(exp_dir: Path, df: pd.DataFrame, hist: pd.DataFrame, settings: Any) -> None:
    """results.parquet/.csv, history.parquet, pareto.* (multi-objective) and the plots."""
    from npsemiseg.tune.plots import write_plots

    meta = {"experiment": settings.experiment, "params": settings.space.keys, "splits": settings.splits,
            "objectives": list(settings.objectives), "metric": "val/miou"}
    write_table(df, exp_dir / RESULTS, meta)
    if not hist.empty:
        write_table(hist, exp_dir / HISTORY, meta)
    if len(settings.objectives) > 1 and len(df):
        write_table(pareto_front(df, tuple(settings.objectives)), exp_dir / PARETO, meta)
    write_plots(exp_dir, df, hist, settings.space.keys)


def read_results(exp_dir: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Load an experiment's results table and its metadata (params, splits, objectives)."""
    path = Path(exp_dir) / RESULTS
    if not path.is_file():
        raise UserError(f"{path}: no results table (run the sweep first, or check --experiment)")
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(b"npsemiseg", b"{}")
    return table.to_pandas(), json.loads(raw)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def summary_text(df: pd.DataFrame, params: list[str]) -> str:
    """A per-split table of trials (best first) and the best full-budget configuration per split."""
    if df.empty:
        return "(no trials)"
    cols = ["trial_id", "status", "iterations", "best_miou", "last_miou", "last_ece", "wall_time_s", *params]
    out = []
    for split, g in df.groupby("split", sort=False):
        g = g.sort_values(["full_budget", "best_miou"], ascending=[False, False])
        rows = [[_fmt(r[c]) for c in cols] for _, r in g.iterrows()]
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
        out.append(f"\n== {split}: {len(g)} trials, {int(g['full_budget'].sum())} ran the full budget ==")
        out.append("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
        out.extend("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows)
    best = best_per_split(df)
    out.append("\nBest configuration per split (full-budget trials only):")
    for _, r in best.iterrows():
        ps = ", ".join(f"{k}={_fmt(r[k])}" for k in params)
        out.append(f"  {r['split']}: val/miou {r['best_miou']:.4f} (trial {r['trial_id']}): {ps}")
    missing = [s for s in df["split"].unique() if s not in set(best["split"])]
    for s in missing:
        out.append(f"  {s}: no trial ran the full budget")
    errors = df[df["status"] == "ERROR"] if "status" in df else df.iloc[:0]
    if len(errors):
        out.append(f"\n{len(errors)} trial(s) failed:")
        out.extend(f"  {r['split']} trial {r['trial_id']}: {r.get('error', '')}" for _, r in errors.iterrows())
    return "\n".join(out)
