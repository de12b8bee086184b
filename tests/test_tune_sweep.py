"""A real smoke sweep on the shared Ray session: tiny data, 1 split x 2 trials, each trial a Ray Train run.

Checks the results table (columns, rows, values), the Pareto export of the multi-objective option, the Optuna
journal (study per split, every trial told), plots, and that the exported best checkpoint works with
``npsemiseg predict``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from conftest import TINY_OVERRIDES
from PIL import Image

from npsemiseg.tune.space import load_space
from npsemiseg.tune.sweep import JOURNAL, SweepSettings, run_sweep

SPACE = """
splits: [demo/1_4]
params:
  train.conf_threshold: {type: float, low: 0.5, high: 0.9}
  train.lr: {type: logfloat, low: 0.003, high: 0.03}
  model.latent_dim: {type: categorical, choices: [4, 8]}
  model.bank_capacity: {type: int, low: 16, high: 64, log: true}
"""
COLUMNS = {"experiment", "split", "trial_id", "status", "full_budget", "iterations", "budget", "best_miou",
           "last_miou", "last_ece", "last_err_auroc", "wall_time_s", "worker_hours", "gpu_hours", "checkpoint_path",
           "train.conf_threshold", "train.lr", "model.latent_dim", "model.bank_capacity"}


def tiny_space(tmp_path: Path, demo_root: Path) -> Path:
    space = tmp_path / "space.yaml"
    searched = {"train.conf_threshold", "train.lr", "model.latent_dim", "model.bank_capacity"}
    over = {k: v for k, v in TINY_OVERRIDES.items() if k not in searched}
    over.update({"data.root": str(demo_root / "voc"), "device": "cpu", "train.iters": 4, "train.eval_every": 2})
    lines = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in over.items())
    space.write_text(SPACE + "overrides:\n" + lines)
    return space


@pytest.mark.ray
@pytest.mark.slow
def test_smoke_sweep_multiobjective_export_predict(ray_session, demo_root: Path, tmp_path: Path) -> None:
    settings = SweepSettings(
        space=load_space(tiny_space(tmp_path, demo_root)), experiment="smoke", storage_root=str(tmp_path / "rr"),
        num_samples=2, max_concurrent=2, n_startup_trials=1, objectives=("miou", "ece"), grace_period=4,
    )
    df = run_sweep(settings, export=True)
    exp = tmp_path / "rr" / "smoke"

    table = pd.read_parquet(exp / "results.parquet")
    assert COLUMNS <= set(table.columns)
    assert len(table) == 2 and set(table["split"]) == {"demo/1_4"} and table["trial_id"].is_unique
    assert (table["status"] == "COMPLETE").all() and table["full_budget"].all()  # grace = budget: no stopping
    assert (table["iterations"] == 4).all()
    assert table["best_miou"].between(0, 1).all() and (table["best_miou"] >= table["last_miou"] - 1e-9).all()
    assert table["last_ece"].between(0, 1).all()
    assert (table["worker_hours"] > 0).all() and (table["gpu_hours"] == 0).all()
    assert table["train.conf_threshold"].between(0.5, 0.9).all() and set(table["model.latent_dim"]) <= {4, 8}
    assert all(Path(p).is_dir() and p.startswith(str(exp)) for p in table["checkpoint_path"])
    assert len(df) == 2 and (exp / "results.csv").is_file()

    hist = pd.read_parquet(exp / "history.parquet")
    assert sorted(hist.groupby("trial_id")["step"].max()) == [4, 4]

    pareto = pd.read_parquet(exp / "pareto.parquet")
    assert 1 <= len(pareto) <= 2 and set(pareto["trial_id"]) <= set(table["trial_id"])

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(exp / JOURNAL)))
    study = optuna.load_study(study_name="smoke/demo/1_4", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert all(len(t.values) == 2 for t in study.trials)

    for name in ("demo_1_4_params.png", "demo_1_4_history.png"):
        assert (exp / "plots" / name).stat().st_size > 1000

    export = exp / "exports" / "demo" / "1_4"
    assert {"model.pt", "config.yaml", "metrics.json", "sweep.json"} <= {p.name for p in export.iterdir()}
    info = json.loads((export / "sweep.json").read_text())
    best = table.loc[table["best_miou"].idxmax()]
    assert info["trial_id"] == best["trial_id"] and info["params"]["model.latent_dim"] == best["model.latent_dim"]

    from npsemiseg.cli import main

    img = next((demo_root / "voc" / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(export), str(img), "--out", str(out)]) == 0
    masks = [p for p in out.rglob("*.png") if "unc" not in p.name and "heat" not in p.name]
    assert masks, f"predict wrote no mask PNG: {list(out.rglob('*'))}"
    mask = np.array(Image.open(masks[0]))
    assert mask.shape == Image.open(img).size[::-1] and mask.max() < 21
