"""Results logic without Ray: best/Pareto only from full-budget trials, checkpoint choice, tables, plots, settings,
remote storage URIs passed through untouched, sweep flags (dry run) and their errors."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from npsemiseg.errors import UserError
from npsemiseg.tune.cli import sweep_main
from npsemiseg.tune.common import split_slug
from npsemiseg.tune.export import export_experiment
from npsemiseg.tune.plots import write_plots
from npsemiseg.tune.resources import TrialResources
from npsemiseg.tune.results import clean_history, pick_checkpoint, read_results, write_table
from npsemiseg.tune.space import load_space
from npsemiseg.tune.summary import best_per_split, pareto_front, summary_text
from npsemiseg.tune.sweep import SweepSettings, plan_lines, slots, trial_spec

SPACE = """
splits: [demo/1_8, demo/1_4]
overrides: {train.iters: 40, train.eval_every: 10}
params:
  train.conf_threshold: {type: float, low: 0.5, high: 0.95}
  model.latent_dim: {type: categorical, choices: [8, 16]}
"""


@pytest.fixture
def space(tmp_path: Path):
    p = tmp_path / "space.yaml"
    p.write_text(SPACE)
    return load_space(p)


def _df() -> pd.DataFrame:
    rows = [
        # split, trial, full, best, last, ece, auroc
        ("demo/1_8", "a", True, 0.50, 0.48, 0.10, 0.80),
        ("demo/1_8", "b", True, 0.55, 0.55, 0.20, 0.70),
        ("demo/1_8", "c", False, 0.90, 0.90, 0.01, 0.99),  # stopped early: never best, never on the front
        ("demo/1_8", "d", True, 0.45, 0.45, 0.30, 0.60),  # dominated by a
        ("demo/1_4", "e", False, 0.70, 0.70, 0.10, 0.80),
    ]
    return pd.DataFrame([
        {"split": s, "trial_id": t, "full_budget": f, "best_miou": b, "last_miou": lm, "last_ece": e,
         "last_err_auroc": au, "status": "COMPLETE" if f else "STOPPED", "iterations": 40 if f else 10,
         "best_step": 40, "wall_time_s": 1.0, "checkpoint_path": "", "train.conf_threshold": 0.7,
         "model.latent_dim": 8}
        for s, t, f, b, lm, e, au in rows
    ])


def test_best_and_pareto_use_full_budget_trials_only() -> None:
    df = _df()
    best = best_per_split(df)
    assert list(best["trial_id"]) == ["b"]  # demo/1_4 has no full-budget trial
    front = pareto_front(df, ("miou", "ece"))
    assert sorted(front["trial_id"]) == ["a", "b"]
    front = pareto_front(df, ("miou", "err_auroc"))
    assert sorted(front["trial_id"]) == ["a", "b"]
    text = summary_text(df, ["train.conf_threshold", "model.latent_dim"])
    assert "demo/1_8: val/miou 0.5500 (trial b)" in text and "demo/1_4: no trial ran the full budget" in text
    err = dict(df.iloc[0], trial_id="z", status="ERROR", full_budget=False, error="UserError: bad root")
    text = summary_text(pd.concat([df, pd.DataFrame([err])]), [])
    assert "1 trial(s) failed:\n  demo/1_8 trial z: UserError: bad root" in text


def test_history_drops_deleted_checkpoints_and_picks_best_retained(tmp_path: Path) -> None:
    kept = [tmp_path / "t1" / "ck2", tmp_path / "t1" / "ck3"]
    for k in kept:
        k.mkdir(parents=True)
    raw = pd.DataFrame({"step": [10, 20, 30], "val/miou": [0.9, 0.5, 0.6], "junk": [1, 2, 3],
                        "train/pl_coverage": [0.4, 0.6, 0.8], "val/teacher_miou": [0.3, 0.4, 0.5],
                        "checkpoint_path": [str(tmp_path / "t1" / "ck1"), str(kept[0]), str(kept[1])]})
    hist = clean_history(raw, tmp_path)
    assert list(hist["checkpoint_path"]) == [None, "t1/ck2", "t1/ck3"]  # ck1 deleted by retention: null
    assert "junk" not in hist
    # the semi-supervised diagnostics a trial reports stay in the history (users compare them across trials)
    assert list(hist["train/pl_coverage"]) == [0.4, 0.6, 0.8] and list(hist["val/teacher_miou"]) == [0.3, 0.4, 0.5]
    assert pick_checkpoint(hist) == "t1/ck3"  # the best retained one, relative to the experiment folder
    remote = clean_history(raw, tmp_path, "s3")
    assert pick_checkpoint(remote) == f"s3://{tmp_path}/t1/ck1"  # remote: not checked, URI restored
    assert pick_checkpoint(pd.DataFrame()) is None


META = {"params": ["train.conf_threshold", "train.lr", "model.latent_dim"], "splits": ["demo/1_8", "demo/1_4"],
        "objectives": ["miou", "ece"],
        "param_specs": [{"key": "train.conf_threshold", "type": "float", "log": False, "choices": []},
                        {"key": "train.lr", "type": "float", "log": True, "choices": []},
                        {"key": "model.latent_dim", "type": "categorical", "log": False, "choices": [8, 16]}]}


def test_tables_roundtrip_and_plots(tmp_path: Path) -> None:
    df = _df()
    df["train.lr"] = [0.001, 0.01, 0.05, 0.003, 0.02]
    df["budget"] = 40
    write_table(df, tmp_path / "results.parquet", META)
    back, meta = read_results(tmp_path)
    assert meta == META and len(back) == 5
    assert (tmp_path / "results.csv").read_text().splitlines()[0].startswith("split,trial_id")
    hist = pd.DataFrame({"split": ["demo/1_8"] * 2, "trial_id": ["a", "a"], "step": [10, 40],
                         "val/miou": [0.3, 0.5]})
    paths = write_plots(tmp_path, df, hist, meta)
    assert [p.name for p in paths] == ["demo_1_8_params.png", "demo_1_8_history.png", "demo_1_8_pareto.png",
                                       "demo_1_4_params.png", "demo_1_4_history.png", "best_by_split.png"]
    assert all(p.stat().st_size > 1000 for p in paths)  # demo/1_4 has no full-budget trial: no Pareto plot
    with pytest.raises(UserError, match="no results table"):
        read_results(tmp_path / "missing")


def test_parameter_axes_follow_the_search_space() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from npsemiseg.tune.plots import _axis, _x

    fig, (a, b) = plt.subplots(1, 2)
    lr, dim = META["param_specs"][1], META["param_specs"][2]
    _axis(a, lr)
    _axis(b, dim, which="y")
    assert a.get_xscale() == "log" and a.get_xlabel() == "train.lr (log)"
    assert [t.get_text() for t in b.get_yticklabels()] == ["8", "16"] and b.get_ylim() == (-0.5, 1.5)
    assert list(_x(dim, pd.Series([16, 8, 32]))[:2]) == [1, 0] and pd.isna(_x(dim, pd.Series([32]))[0])
    plt.close(fig)


def test_export_names_missing_split_and_skips_without_checkpoint(tmp_path: Path, capsys) -> None:
    write_table(_df(), tmp_path / "results.parquet", {"params": []})
    with pytest.raises(UserError, match="--split: 'demo/1_2' is not in"):
        export_experiment(tmp_path, split="demo/1_2")
    assert export_experiment(tmp_path) == {}
    out = capsys.readouterr().out
    assert "demo/1_8: best trial b not exported" in out and "demo/1_4: nothing exported" in out
    assert not (tmp_path / "exports" / "demo" / "1_8").exists()


def test_remote_storage_uri_passes_through(space, tmp_path: Path) -> None:
    s = SweepSettings(space=space, experiment="exp", storage_root="s3://bucket/sweeps/", local_dir=str(tmp_path))
    assert s.remote and s.storage_uri == "s3://bucket/sweeps"
    assert s.experiment_dir == tmp_path.resolve() / "exp"
    assert s.tune_path == "s3://bucket/sweeps/exp/tune"
    assert trial_spec(s).storage_root == "s3://bucket/sweeps"
    local = SweepSettings(space=space, experiment="exp", storage_root=str(tmp_path / "rr"))
    assert not local.remote and local.experiment_dir == (tmp_path / "rr" / "exp").resolve()
    assert trial_spec(local).storage_root == str((tmp_path / "rr").resolve())


def test_settings_defaults_and_errors(space) -> None:
    s = SweepSettings(space=space, resources=TrialResources(workers=2, cpus_per_worker=3, gpus_per_trial=2))
    assert s.splits == ["demo/1_8", "demo/1_4"] and s.grace_period == 10 and s.max_t(s.base_config()) == 40
    plan = "\n".join(plan_lines(s, {"CPU": 16.0, "GPU": 2.0}))
    assert "2 x 32 trials = 64 trials" in plan and "2 worker(s) x 3 CPU, 2 GPU per trial" in plan
    assert "at most 4 trials at once (all splits)" in plan  # the defaults' one home: tune/common.py BUDGETS
    assert slots(s, {"CPU": 16.0, "GPU": 2.0}) == 1 and slots(s, {"CPU": 64.0, "GPU": 8.0}) == 4
    assert slots(SweepSettings(space=space, num_samples=1), {"CPU": 99.0}) == 2  # 2 splits x 1 trial
    assert "-> 1 trial(s) fit at once now" in plan
    assert SweepSettings(space=space, time_attr="training_iteration").max_t(s.base_config()) == 4
    space.asha["grace_period"] = 10
    assert SweepSettings(space=space, overrides={"train.iters": 6}).grace_period == 6  # clamped to the budget
    for kw, match in [({"experiment": "a/b"}, "--experiment"), ({"objectives": ("ece",)}, "--objectives"),
                      ({"objectives": ("miou", "acc")}, "--objectives"), ({"grace_period": 41}, "--grace-period"),
                      ({"reduction_factor": 1.0}, "--reduction-factor"), ({"num_samples": 0}, "--trials")]:
        with pytest.raises(UserError, match=match):
            SweepSettings(space=space, **kw)
    assert split_slug("voc/classic/92") == "voc_classic_92"


def test_script_dry_run_and_bad_flags(space, tmp_path: Path, capsys) -> None:
    argv = ["--space", str(space.path), "--dry-run", "--demo-root", str(tmp_path / "d"), "--trials", "3",
            "--set", "train.iters=20", "--grace-period", "5"]
    assert sweep_main("voc", argv) == 0
    out = capsys.readouterr().out
    assert "[plan] splits       2 x 3 trials = 6 trials, one shared pool of trial slots: demo/1_8, demo/1_4" in out
    assert "20 steps per trial" in out and "grace 5" in out
    assert not (tmp_path / "d").exists()  # a dry run generates nothing
    assert sweep_main("voc", argv + ["--smoke-test"]) == 0
    assert "1 x 3 trials" in capsys.readouterr().out
    for extra, msg in [(["--set", "train.conf_threshold=0.9"], "is searched by"),
                       (["--set", "train.bogus=1"], "train.bogus: unknown config key"),
                       (["--gpus-per-trial", "0.5", "--workers-per-trial", "2"], "several ranks"),
                       (["--objectives", "miou,foo"], "--objectives")]:
        assert sweep_main("voc", argv + extra) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1
    assert sweep_main("voc", ["--data-root", str(tmp_path / "none"), "--space", str(space.path)]) == 2
    assert "--data-root: folder not found" in capsys.readouterr().err
