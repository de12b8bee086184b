"""What a finished sweep says: best configuration per split, Pareto front, costs, slot utilisation, importances.

Best configurations and the Pareto front come only from trials that ran the full budget (``full_budget``): a
stopped trial's value was measured after fewer steps and is not comparable. Parameter importances are computed
from a split's COMPLETE (= full-budget) Optuna trials, and only when there are at least
``MIN_TRIALS_FOR_IMPORTANCE`` of them; otherwise the summary says how many there were.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from npsemiseg.tune.common import MIN_TRIALS_FOR_IMPORTANCE, study_name

OBJECTIVE_COLUMNS = {"miou": ("last_miou", "max"), "ece": ("last_ece", "min"), "err_auroc": ("last_err_auroc", "max")}


def pareto_front(df: pd.DataFrame, objectives: tuple[str, ...]) -> pd.DataFrame:
    """Non-dominated full-budget trials per split for the given objectives (e.g. ("miou", "ece"))."""
    cols = [OBJECTIVE_COLUMNS[o] for o in objectives]
    keep = []
    ok = df[df["full_budget"]] if len(df) else df
    for _, g in ok.groupby("split", sort=False):
        g = g.dropna(subset=[c for c, _ in cols])
        vals = [[(r[c] if m == "max" else -r[c]) for c, m in cols] for _, r in g.iterrows()]  # larger = better
        for i, idx in enumerate(g.index):
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


def importances(journal: Path, experiment: str, splits: list[str], multi_objective: bool = False) -> dict[str, Any]:
    """Per split: ``{"n_complete": N, "importances": {param: share}}`` or ``{"n_complete": N, "reason": ...}``."""
    if not journal.is_file():
        return {}
    import optuna

    from npsemiseg.tune.searcher import journal_storage

    storage = journal_storage(journal)
    out: dict[str, Any] = {}
    for s in splits:
        try:
            study = optuna.load_study(study_name=study_name(experiment, s), storage=storage)
        except KeyError:
            continue
        n = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        if n < MIN_TRIALS_FOR_IMPORTANCE:
            out[s] = {"n_complete": n, "reason": f"{n} full-budget trial(s); importances need >= "
                                                 f"{MIN_TRIALS_FOR_IMPORTANCE}"}
            continue
        target = (lambda t: t.values[0]) if multi_objective else None
        try:
            imp = optuna.importance.get_param_importances(study, target=target)
        except (RuntimeError, ValueError) as e:  # e.g. a parameter that never varied
            out[s] = {"n_complete": n, "reason": f"not computable ({e})"}
            continue
        out[s] = {"n_complete": n, "importances": {k: round(float(v), 4) for k, v in imp.items()}}
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _table(g: pd.DataFrame, cols: list[str]) -> list[str]:
    rows = [[_fmt(r.get(c)) for c in cols] for _, r in g.iterrows()]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    return ["  ".join(c.ljust(w) for c, w in zip(cols, widths))] + [
        "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]


def cost_lines(df: pd.DataFrame, meta: dict[str, Any]) -> list[str]:
    """Training cost, start-up/placement and queue time, slot utilisation."""
    out = []
    if "train_time_s" in df:
        out.append(f"cost: {df['train_time_s'].sum() / 3600:.3f} trial-hours of training = "
                   f"{df['gpu_hours'].sum():.3f} GPU-hours, {df['cpu_hours'].sum():.3f} CPU-hours; start-up/"
                   f"placement {df['placement_s'].sum():.0f} s, queued {df['queued_s'].sum():.0f} s (not counted)")
    u = meta.get("slot_utilisation") or {}
    if u and not math.isnan(_nan(u.get("utilisation"))):
        out.append(f"slot utilisation: {100 * u['utilisation']:.1f} % ({u['busy_s']:.0f} s of trial time in "
                   f"{u['slots']} slots x {u['makespan_s']:.0f} s)")
    return out


def _nan(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) else math.nan


def summary_text(df: pd.DataFrame, meta: dict[str, Any] | list[str]) -> str:
    """Per-split tables (best first), the best full-budget configuration per split, the Pareto front, costs,
    slot utilisation and importances."""
    if isinstance(meta, list):
        meta = {"params": meta}
    params = list(meta.get("params", []))
    if df.empty:
        return "(no trials)"
    cols = [c for c in ("trial_id", "optuna_trial", "status", "iterations", "best_miou", "last_miou", "last_ece",
                        "train_time_s") if c in df] + params
    out = []
    for split, g in df.groupby("split", sort=False):
        g = g.sort_values(["full_budget", "best_miou"], ascending=[False, False])
        out.append(f"\n== {split}: {len(g)} trials, {int(g['full_budget'].sum())} ran the full budget ==")
        out.extend(_table(g, cols))
    best = best_per_split(df)
    out.append("\nBest configuration per split (full-budget trials only):")
    for _, r in best.iterrows():
        ps = ", ".join(f"{k}={_fmt(r[k])}" for k in params)
        out.append(f"  {r['split']}: val/miou {r['best_miou']:.4f} (trial {r['trial_id']}): {ps}")
    for s in [s for s in df["split"].unique() if s not in set(best["split"])]:
        out.append(f"  {s}: no trial ran the full budget")
    objectives = tuple(meta.get("objectives", ("miou",)))
    if len(objectives) > 1:
        front = pareto_front(df, objectives)
        out.append(f"\nPareto front ({', '.join(objectives)}; full-budget trials):")
        out.extend("  " + line for line in _table(front, ["split", "trial_id", *[OBJECTIVE_COLUMNS[o][0]
                                                                                  for o in objectives]]))
    lines = cost_lines(df, meta)
    if lines:
        out.append("")
        out.extend(lines)
    for s, imp in (meta.get("importances") or {}).items():
        if "importances" in imp:
            shares = ", ".join(f"{k} {v:.2f}" for k, v in imp["importances"].items())
            out.append(f"importances {s} ({imp['n_complete']} full-budget trials): {shares}")
        else:
            out.append(f"importances {s}: not shown ({imp['reason']})")
    errors = df[df["status"] == "ERROR"] if "status" in df else df.iloc[:0]
    if len(errors):
        out.append(f"\n{len(errors)} trial(s) failed:")
        out.extend(f"  {r['split']} trial {r['trial_id']}: {r.get('error')}" for _, r in errors.iterrows())
    return "\n".join(out)
