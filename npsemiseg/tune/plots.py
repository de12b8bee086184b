"""Sweep plots written beside the results table (matplotlib PNGs; no browser or server needed).

- ``plots/<split>_params.png``: best val/miou of each trial against each searched hyper-parameter
  (filled = ran the full budget, hollow = stopped early by ASHA).
- ``plots/<split>_history.png``: optimisation history: val/miou of every report against cumulative
  trial-steps spent, and the running best of full-budget trials.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from npsemiseg.fileio import atomic_path
from npsemiseg.tune.sweep import split_slug


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")


def plot_params(df: pd.DataFrame, params: list[str], split: str, path: Path) -> None:
    """Scatter of best val/miou vs each parameter for one split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(params))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False, layout="constrained")
    full = df[df["full_budget"]]
    part = df[~df["full_budget"]]
    for i, key in enumerate(params):
        ax = axes[i // cols][i % cols]
        for sub, kw in ((full, {"label": "full budget"}), (part, {"facecolors": "none", "label": "stopped"})):
            if sub.empty:
                continue
            x = sub[key]
            if x.map(lambda v: isinstance(v, str)).any():
                x = x.astype(str)
            ax.scatter(x, sub["best_miou"], edgecolors="C0", **kw)
        vals = pd.to_numeric(df[key], errors="coerce")
        if vals.notna().all() and (vals > 0).all() and vals.max() / max(vals.min(), 1e-12) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("best val/miou")
        ax.grid(alpha=0.3)
    for j in range(len(params), rows * cols):
        axes[j // cols][j % cols].axis("off")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{split}: val/miou vs hyper-parameters ({len(df)} trials)")
    _save(fig, path)
    plt.close(fig)


def plot_history(df: pd.DataFrame, hist: pd.DataFrame, split: str, path: Path) -> None:
    """val/miou of each trial in start order, against cumulative trial-steps; running best of full trials."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    spent, best, xs, ys = 0, -math.inf, [], []
    for i, (_, r) in enumerate(df.iterrows()):
        h = hist[hist["trial_id"] == r["trial_id"]] if not hist.empty else pd.DataFrame()
        if not h.empty and "step" in h and "val/miou" in h:
            ax.plot(spent + h["step"], h["val/miou"], marker=".", alpha=0.6, color=f"C{i % 10}")
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
    plt.close(fig)


def write_plots(exp_dir: Path, df: pd.DataFrame, hist: pd.DataFrame, params: list[str]) -> list[Path]:
    """Both plots for every split; returns the written paths."""
    out = []
    if df.empty:
        return out
    for split, g in df.groupby("split", sort=False):
        slug = split_slug(split)
        h = hist[hist["split"] == split] if not hist.empty else hist
        p1, p2 = exp_dir / "plots" / f"{slug}_params.png", exp_dir / "plots" / f"{slug}_history.png"
        plot_params(g, params, split, p1)
        plot_history(g, h, split, p2)
        out += [p1, p2]
    return out
