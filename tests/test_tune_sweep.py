"""A real smoke sweep on the shared Ray session: tiny data, 2 splits x 2 trials in ONE Tuner, each trial a Ray
Train run.

Checks that trials of different splits overlap in time (one pool of slots), the results table (columns, rows,
values, relative paths, null errors), the Pareto export of the multi-objective option, the Optuna journal (a
study per split, trials told COMPLETE with step-keyed values and user attributes joining them to the table), the
plots, and that the exported best checkpoint works with ``npsemiseg predict``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import TINY_OVERRIDES
from PIL import Image

from npsemiseg.tune.common import JOURNAL
from npsemiseg.tune.space import load_space
from npsemiseg.tune.sweep import SweepSettings, run_sweep

SPACE = """
splits: [demo/1_8, demo/1_4]
params:
  train.conf_threshold: {type: float, low: 0.5, high: 0.9}
  train.lr: {type: logfloat, low: 0.003, high: 0.03}
  model.latent_dim: {type: categorical, choices: [4, 8]}
  model.bank_capacity: {type: int, low: 16, high: 64, log: true}
"""
COLUMNS = {"experiment", "split", "split_checksum", "trial_id", "optuna_trial", "status", "full_budget",
           "iterations", "budget", "best_miou", "last_miou", "last_ece", "last_err_auroc", "seed", "sampler_seed",
           "start_time", "end_time", "train_time_s", "slot_time_s", "placement_s", "queued_s", "worker_hours",
           "gpu_hours", "cpu_hours", "checkpoint_path", "trial_path", "error", "package_version", "git_commit",
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
    assert len(table) == 4 and sorted(table["split"]) == ["demo/1_4"] * 2 + ["demo/1_8"] * 2
    assert table["trial_id"].is_unique
    assert (table["status"] == "COMPLETE").all() and table["full_budget"].all()  # grace = budget: no stopping
    assert (table["iterations"] == 4).all()
    assert table["best_miou"].between(0, 1).all() and (table["best_miou"] >= table["last_miou"] - 1e-9).all()
    assert table["last_ece"].between(0, 1).all()
    assert table["error"].isna().all() and (table["seed"] == settings.base.seed).all()
    assert table.groupby("split")["sampler_seed"].nunique().eq(1).all() and table["sampler_seed"].nunique() == 2
    assert table["split_checksum"].str.fullmatch("[0-9a-f]{64}").all() and table["split_checksum"].nunique() == 2
    assert sorted(table["optuna_trial"]) == [0, 0, 1, 1]
    # Cost from the time spent training (> 0, < the time the trial held its slot); no GPU in this sweep.
    assert (table["train_time_s"] > 0).all() and (table["train_time_s"] <= table["slot_time_s"]).all()
    assert (table["worker_hours"] > 0).all() and (table["gpu_hours"] == 0).all()
    assert (table["placement_s"] >= 0).all() and (table["queued_s"] >= 0).all()
    assert table["train.conf_threshold"].between(0.5, 0.9).all() and set(table["model.latent_dim"]) <= {4, 8}
    for col in ("checkpoint_path", "trial_path"):  # relative to the experiment folder, and there
        assert all(not Path(p).is_absolute() and (exp / p).is_dir() for p in table[col]), table[col]
    assert len(df) == 4 and (exp / "results.csv").is_file()

    # One pool of slots: a trial of one split ran while a trial of the other split was running.
    start = pd.to_datetime(table["start_time"])
    end = pd.to_datetime(table["end_time"])
    a, b = table["split"] == "demo/1_8", table["split"] == "demo/1_4"
    assert any(s1 < e2 and s2 < e1 for s1, e1 in zip(start[a], end[a]) for s2, e2 in zip(start[b], end[b])), \
        table[["split", "start_time", "end_time"]]
    meta = json.loads(pq.read_schema(exp / "results.parquet").metadata[b"npsemiseg"])
    util = meta["slot_utilisation"]
    assert util["slots"] == 2 and 0 < util["utilisation"] <= 1.0 + 1e-6 and util["busy_s"] > 0
    assert meta["importances"]["demo/1_8"]["n_complete"] == 2 and "reason" in meta["importances"]["demo/1_8"]

    hist = pd.read_parquet(exp / "history.parquet")
    assert sorted(hist.groupby("trial_id")["step"].max()) == [4] * 4
    kept = hist["checkpoint_path"].dropna()
    assert len(kept) and all((exp / p).is_dir() for p in kept)  # no dangling checkpoint path

    pareto = pd.read_parquet(exp / "pareto.parquet")
    assert 2 <= len(pareto) <= 4 and set(pareto["trial_id"]) <= set(table["trial_id"])

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(exp / JOURNAL)))
    for split, g in table.groupby("split"):
        study = optuna.load_study(study_name=f"smoke/{split}", storage=storage)
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
        assert all(len(t.values) == 2 for t in study.trials)
        by_id = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
        assert set(by_id) == set(g["trial_id"])
        for _, r in g.iterrows():
            attrs = by_id[r["trial_id"]].user_attrs
            assert attrs["split"] == split and attrs["steps"] == 4 and by_id[r["trial_id"]].number == r["optuna_trial"]
            assert sorted(attrs["reports"]) == ["2", "4"] and (exp / attrs["checkpoint"]).is_dir()
            assert by_id[r["trial_id"]].values[0] == pytest.approx(r["last_miou"])

    for name in ("demo_1_4_params.png", "demo_1_4_history.png", "demo_1_4_pareto.png", "best_by_split.png"):
        assert (exp / "plots" / name).stat().st_size > 1000

    export = exp / "exports" / "demo" / "1_4"
    assert {"model.pt", "config.yaml", "metrics.json", "sweep.json"} <= {p.name for p in export.iterdir()}
    info = json.loads((export / "sweep.json").read_text())
    t14 = table[b]
    best = t14.loc[t14["best_miou"].idxmax()]
    assert info["trial_id"] == best["trial_id"] and info["params"]["model.latent_dim"] == best["model.latent_dim"]

    from npsemiseg.cli import main

    img = next((demo_root / "voc" / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(export), str(img), "--out", str(out)]) == 0
    masks = [p for p in out.rglob("*.png") if "unc" not in p.name and "heat" not in p.name]
    assert masks, f"predict wrote no mask PNG: {list(out.rglob('*'))}"
    mask = np.array(Image.open(masks[0]))
    assert mask.shape == Image.open(img).size[::-1] and mask.max() < 21
