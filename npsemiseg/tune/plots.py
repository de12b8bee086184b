"""Sweep plots written beside the results table (matplotlib PNGs; no browser or server needed).

- ``plots/<split>_params.png``: best val/miou of each trial against each searched parameter, on the parameter's
  own scale (log axes for log-scaled ranges, one tick per choice for categorical ones); colour = steps reached,
  filled = full budget, hollow = stopped early; every point is labelled with its trial id.
- ``plots/<split>_history.png``: val/miou of every report against cumulative trial-steps, the running best of
  full-budget trials, each curve labelled with its trial id.
- ``plots/best_by_split.png``: the best full-budget trial's value of every parameter, split by split (how the best
  confidence threshold moves with the label fraction).
- ``plots/<split>_pareto.png`` (two objectives): every full-budget trial, the Pareto front joined.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from npsemiseg.fileio import atomic_path
from npsemiseg.tune.common import split_slug
from npsemiseg.tune.summary import OBJECTIVE_COLUMNS, best_per_split, pareto_front


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    _plt().close(fig)


def _specs(meta: dict[str, Any]) -> list[dict[str, Any]]:
    specs = meta.get("param_specs")
    if specs:
        return specs
    return [{"key": k, "type": "float", "log": False, "choices": []} for k in meta.get("params", [])]


def _x(spec: dict[str, Any], values: pd.Series) -> pd.Series:
    """Positions on the parameter's axis: the choice index for a categorical, the value otherwise."""
    if spec["type"] == "categorical":
        index = {repr(c): i for i, c in enumerate(spec["choices"])}
        return values.map(lambda v: index.get(repr(v.item() if hasattr(v, "item") else v), math.nan))
    return pd.to_numeric(values, errors="coerce")


def _axis(ax: Any, spec: dict[str, Any], which: str = "x") -> None:
    """Log scale or categorical ticks for one parameter's axis."""
    if spec["type"] == "categorical":
        ticks = list(range(len(spec["choices"])))
        labels = [str(c) for c in spec["choices"]]
        (ax.set_xticks if which == "x" else ax.set_yticks)(ticks, labels)
        (ax.set_xlim if which == "x" else ax.set_ylim)(-0.5, len(ticks) - 0.5)
    else:
        if spec.get("log"):
            from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

            (ax.set_xscale if which == "x" else ax.set_yscale)("log")
            axis = ax.xaxis if which == "x" else ax.yaxis
            axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 0.002, 0.005, 0.01, ... as plain numbers
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
        if spec.get("low") is not None and spec.get("high") is not None:  # the whole searched range
            lo, hi = float(spec["low"]), float(spec["high"])
            pad = (hi / lo) ** 0.05 if spec.get("log") else 0.05 * (hi - lo)
            (ax.set_xlim if which == "x" else ax.set_ylim)(*((lo / pad, hi * pad) if spec.get("log")
                                                              else (lo - pad, hi + pad)))
    (ax.set_xlabel if which == "x" else ax.set_ylabel)(spec["key"] + (" (log)" if spec.get("log") else ""))


def plot_params(df: pd.DataFrame, meta: dict[str, Any], split: str, path: Path) -> None:
    """Best val/miou vs each parameter for one split; colour = steps reached; labels = trial ids."""
    plt = _plt()
    specs = _specs(meta)
    n = max(1, len(specs))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, layout="constrained")
    budget = max(1, int(df["budget"].max())) if "budget" in df and len(df) else 1
    norm = plt.Normalize(0, budget)
    sc = None
    for i, spec in enumerate(specs):
        ax = axes[i // cols][i % cols]
        x = _x(spec, df[spec["key"]]) if spec["key"] in df else pd.Series(math.nan, index=df.index)
        for full, marker_kw in ((True, {}), (False, {"facecolors": "none", "linewidths": 1.5})):
            sub = df["full_budget"] == full
            if not sub.any():
                continue
            colors = plt.get_cmap("viridis")(norm(df.loc[sub, "iterations"]))
            kw = {"edgecolors": colors, **marker_kw} if not full else {"c": colors, "edgecolors": "k"}
            sc = ax.scatter(x[sub], df.loc[sub, "best_miou"], s=36, **kw)
        for xi, yi, tid in zip(x, df["best_miou"], df["trial_id"]):
            if not (math.isnan(xi) or math.isnan(yi)):
                ax.annotate(str(tid), (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points")
        _axis(ax, spec)
        ax.set_ylabel("best val/miou")
        ax.grid(alpha=0.3)
    for j in range(len(specs), rows * cols):
        axes[j // cols][j % cols].axis("off")
    if sc is not None:
        bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=axes, shrink=0.8)
        bar.set_label(f"steps reached (budget {budget}; hollow = stopped early)")
    fig.suptitle(f"{split}: best val/miou vs hyper-parameters ({len(df)} trials, "
                 f"{int(df['full_budget'].sum())} full budget)")
    _save(fig, path)


def plot_history(df: pd.DataFrame, hist: pd.DataFrame, split: str, path: Path) -> None:
    """val/miou of each trial in start order, against cumulative trial-steps; running best of full trials."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    order = df.sort_values("start_time") if "start_time" in df and df["start_time"].notna().all() else df
    spent, best, xs, ys = 0, -math.inf, [], []
    for i, (_, r) in enumerate(order.iterrows()):
        h = hist[hist["trial_id"] == r["trial_id"]] if not hist.empty else pd.DataFrame()
        if not h.empty and "step" in h and "val/miou" in h:
            ax.plot(spent + h["step"], h["val/miou"], marker=".", alpha=0.7, color=f"C{i % 10}")
            ax.annotate(str(r["trial_id"]), (spent + h["step"].iloc[-1], h["val/miou"].iloc[-1]), fontsize=6,
                        color=f"C{i % 10}", xytext=(2, 2), textcoords="offset points")
        spent += int(r["iterations"])
        if r["full_budget"] and not math.isnan(r["best_miou"]):
            best = max(best, r["best_miou"])
        if best > -math.inf:
            xs.append(spent)
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="k", label="best full-budget trial so far")
        ax.legend(fontsize=8)
    ax.set_xlabel("trial-steps spent (cumulative, trials in start order)")
    ax.set_ylabel("val/miou")
    ax.set_title(f"{split}: optimisation history")
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_best_by_split(df: pd.DataFrame, meta: dict[str, Any], path: Path) -> bool:
    """Each parameter's best setting per split (x = splits in sweep order); False when no split has a best."""
    best = best_per_split(df)
    if best.empty:
        return False
    plt = _plt()
    order = [s for s in meta.get("splits", []) if s in set(best["split"])] or list(best["split"])
    best = best.set_index("split").loc[order].reset_index()
    specs = _specs(meta)
    n = max(1, len(specs))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, layout="constrained")
    xs = list(range(len(order)))
    for i, spec in enumerate(specs):
        ax = axes[i // cols][i % cols]
        y = _x(spec, best[spec["key"]])
        ax.plot(xs, y, marker="o")
        for xi, yi, tid, m in zip(xs, y, best["trial_id"], best["best_miou"]):
            ax.annotate(f"{tid}\nmIoU {m:.3f}", (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xticks(xs, order, rotation=20, fontsize=8)
        ax.set_xlim(-0.5, len(xs) - 0.5)
        _axis(ax, spec, which="y")
        ax.set_xlabel("label split")
        ax.grid(alpha=0.3)
    for j in range(len(specs), rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle("best full-budget setting of each parameter, per label split")
    _save(fig, path)
    return True


def plot_pareto(df: pd.DataFrame, objectives: tuple[str, ...], split: str, path: Path) -> bool:
    """Full-budget trials on the first two objectives, the Pareto front joined; False when none ran fully."""
    full = df[df["full_budget"]]
    if full.empty:
        return False
    plt = _plt()
    (cx, mx), (cy, my) = OBJECTIVE_COLUMNS[objectives[0]], OBJECTIVE_COLUMNS[objectives[1]]
    front = pareto_front(df, objectives[:2]).sort_values(cx)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.scatter(full[cx], full[cy], color="0.6", label="full-budget trials")
    ax.plot(front[cx], front[cy], "o-", color="C3", label="Pareto front")
    for _, r in full.iterrows():
        ax.annotate(str(r["trial_id"]), (r[cx], r[cy]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"{cx} ({'higher' if mx == 'max' else 'lower'} is better)")
    ax.set_ylabel(f"{cy} ({'higher' if my == 'max' else 'lower'} is better)")
    ax.set_title(f"{split}: Pareto front of {len(full)} full-budget trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def write_plots(exp_dir: Path, df: pd.DataFrame, hist: pd.DataFrame, meta: dict[str, Any] | list[str]) -> list[Path]:
    """Every plot of the sweep; returns the written paths."""
    if isinstance(meta, list):
        meta = {"params": meta}
    out: list[Path] = []
    if df.empty:
        return out
    plots = exp_dir / "plots"
    objectives = tuple(meta.get("objectives", ("miou",)))
    for split, g in df.groupby("split", sort=False):
        slug = split_slug(split)
        h = hist[hist["split"] == split] if not hist.empty else hist
        plot_params(g, meta, split, plots / f"{slug}_params.png")
        plot_history(g, h, split, plots / f"{slug}_history.png")
        out += [plots / f"{slug}_params.png", plots / f"{slug}_history.png"]
        if len(objectives) > 1 and plot_pareto(g, objectives, split, plots / f"{slug}_pareto.png"):
            out.append(plots / f"{slug}_pareto.png")
    if plot_best_by_split(df, meta, plots / "best_by_split.png"):
        out.append(plots / "best_by_split.png")
    return out
