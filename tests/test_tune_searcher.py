"""The sweep's searcher, scheduler and timing without a Ray session: what Optuna is told, which trials the rung
rule stops, and slot utilisation from an event log."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from npsemiseg.tune.common import sampler_seed
from npsemiseg.tune.scheduler import SplitRungScheduler
from npsemiseg.tune.searcher import SplitSearcher, journal_storage
from npsemiseg.tune.timing import trial_times, utilisation

SPACE = {"train.conf_threshold": FloatDistribution(0.5, 0.95), "model.latent_dim": CategoricalDistribution([8, 16])}
STATE = optuna.trial.TrialState


def _searcher(tmp_path: Path, **kw) -> SplitSearcher:
    args = dict(experiment="exp", splits=["demo/1_8", "demo/1_4"], trials_per_split=2, distributions=SPACE,
                metrics=["val/miou"], modes=["max"], journal=str(tmp_path / "journal.log"),
                experiment_dir=str(tmp_path), budget=40, seed=3, n_startup_trials=1, concurrent=True)
    args.update(kw)
    return SplitSearcher(**args)


def _study(tmp_path: Path, split: str) -> optuna.Study:
    return optuna.load_study(study_name=f"exp/{split}", storage=journal_storage(tmp_path / "journal.log"))


def test_searcher_routes_splits_and_tells_pruned_and_complete(tmp_path: Path) -> None:
    s = _searcher(tmp_path)
    configs = {tid: s.suggest(tid) for tid in ("t1", "t2", "t3", "t4")}
    assert s.suggest("t5") == "FINISHED"  # 2 splits x 2 trials
    assert [c["data.split"] for c in configs.values()] == ["demo/1_8", "demo/1_4", "demo/1_8", "demo/1_4"]
    assert all(0.5 <= c["train.conf_threshold"] <= 0.95 and c["model.latent_dim"] in (8, 16) for c in configs.values())

    ck = tmp_path / "t1" / "checkpoint_step00000020"
    s.on_trial_result("t1", {"step": 10, "val/miou": 0.2, "time/train_s": 5.0})
    s.on_trial_complete("t1", {"step": 20, "val/miou": 0.3, "checkpoint_path": str(ck), "time/train_s": 9.5})
    for step in (10, 20, 30):  # the last report (step 40) arrives only with the completion
        s.on_trial_result("t3", {"step": step, "val/miou": step / 100 + 0.3 * (step == 20),
                                 "checkpoint_path": str(tmp_path / "t3" / f"checkpoint_step{step:08d}")})
    s.on_trial_complete("t3", {"step": 40, "val/miou": 0.45, "checkpoint_path": str(tmp_path / "t3" / "c40")})
    s.on_trial_complete("t2", {"step": 10, "val/miou": 0.1}, error=True)
    s.on_trial_complete("t3", {"step": 40, "val/miou": 0.9})  # a second completion (restore) is ignored

    study = _study(tmp_path, "demo/1_8")
    t1, t3 = study.trials
    assert t1.state == STATE.PRUNED and t1.intermediate_values == {10: 0.2, 20: 0.3} and t1.value == 0.3
    assert t1.user_attrs == {"ray_trial_id": "t1", "split": "demo/1_8", "budget": 40, "steps": 20,
                             "checkpoint": "t1/checkpoint_step00000020", "checkpoint_score": 0.3,
                             "train_time_s": 9.5}
    # the checkpoint attr follows the best val/miou (0.5 at step 20), as the results row and retention do
    assert t3.user_attrs["checkpoint"] == "t3/checkpoint_step00000020" and t3.user_attrs["checkpoint_score"] == 0.5
    assert t3.state == STATE.COMPLETE and t3.value == 0.45 and sorted(t3.intermediate_values) == [10, 20, 30, 40]
    other = _study(tmp_path, "demo/1_4")
    assert [t.state for t in other.trials] == [STATE.FAIL, STATE.RUNNING]
    # Each split has its own seeded sampler (different seeds) with the constant liar on.
    assert sampler_seed(3, "demo/1_8") != sampler_seed(3, "demo/1_4")
    assert configs["t1"]["train.conf_threshold"] != configs["t2"]["train.conf_threshold"]
    assert s.study("demo/1_8").sampler._constant_liar

    # A restored searcher (Tune pickles it, then loads its saved state) reloads the studies from the journal;
    # the orphan "t4" (asked for, never started by Tune) is marked FAIL: no RUNNING leftover.
    state_file = tmp_path / "searcher.pkl"
    s.save(str(state_file))
    r = _searcher(tmp_path)
    r.restore(str(state_file))
    assert r.assigned == s.assigned
    assert r.fail_orphans({"t1", "t2", "t3"}) == 1
    assert [t.state for t in _study(tmp_path, "demo/1_4").trials] == [STATE.FAIL, STATE.FAIL]
    assert "never started" in _study(tmp_path, "demo/1_4").trials[1].user_attrs["note"]


def test_searcher_multi_objective(tmp_path: Path) -> None:
    s = _searcher(tmp_path, metrics=["val/miou", "val/ece"], modes=["max", "min"], splits=["demo/1_8"])
    s.suggest("a")
    s.suggest("b")
    s.on_trial_result("a", {"step": 20, "val/miou": 0.2, "val/ece": 0.1})
    s.on_trial_complete("a", {"step": 40, "val/miou": 0.4, "val/ece": 0.05})
    s.on_trial_complete("b", {"step": 20, "val/miou": 0.1, "val/ece": 0.3})
    a, b = _study(tmp_path, "demo/1_8").trials
    assert a.state == STATE.COMPLETE and a.values == [0.4, 0.05]
    assert a.user_attrs["reports"] == {"20": [0.2, 0.1], "40": [0.4, 0.05]}
    assert b.state == STATE.PRUNED
    assert isinstance(s.study("demo/1_8").sampler, optuna.samplers.TPESampler)
    assert s.study("demo/1_8").directions == [optuna.study.StudyDirection.MAXIMIZE,
                                              optuna.study.StudyDirection.MINIMIZE]


def _trial(tid: str, split: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=tid, config={"data.split": split})


def test_rung_scheduler_per_split_and_pareto_safe() -> None:
    assert SplitRungScheduler.rung_milestones(10, 80, 2) == [10, 20, 40]
    one = SplitRungScheduler(time_attr="step", metrics=["val/miou"], modes=["max"], max_t=40, grace_period=10,
                             reduction_factor=2)
    r = lambda step, m: {"step": step, "val/miou": m}  # noqa: E731
    assert one.on_trial_result(None, _trial("a", "s1"), r(10, 0.5)) == "CONTINUE"
    assert one.on_trial_result(None, _trial("b", "s1"), r(10, 0.1)) == "STOP"  # below the median of rung 10
    assert one.on_trial_result(None, _trial("c", "s2"), r(10, 0.1)) == "CONTINUE"  # other split: own rungs
    assert one.on_trial_result(None, _trial("a", "s1"), r(20, 0.6)) == "CONTINUE"
    assert one.on_trial_result(None, _trial("a", "s1"), r(40, 0.7)) == "STOP"  # the budget

    two = SplitRungScheduler(time_attr="step", metrics=["val/miou", "val/ece"], modes=["max", "min"], max_t=40,
                             grace_period=10, reduction_factor=2)
    rr = lambda step, m, e: {"step": step, "val/miou": m, "val/ece": e}  # noqa: E731
    assert two.on_trial_result(None, _trial("a", "s"), rr(10, 0.5, 0.20)) == "CONTINUE"
    # Worse mIoU but better ECE: ASHA on mIoU would stop it; the Pareto-safe rule keeps it.
    assert two.on_trial_result(None, _trial("b", "s"), rr(10, 0.1, 0.05)) == "CONTINUE"
    assert two.on_trial_result(None, _trial("c", "s"), rr(10, 0.05, 0.30)) == "STOP"  # worse on both


def test_trial_times_and_utilisation(tmp_path: Path) -> None:
    ev = [
        {"event": "sweep_start", "time": 0.0},
        {"event": "start", "trial_id": "a", "time": 10.0},
        {"event": "start", "trial_id": "b", "time": 10.0},
        {"event": "end", "trial_id": "a", "time": 50.0},
        {"event": "start", "trial_id": "c", "time": 50.0},
        {"event": "result", "trial_id": "b", "time": 60.0},  # the driver dies: b's attempt ends at its last event
        {"event": "sweep_start", "time": 1000.0},
        {"event": "start", "trial_id": "b", "time": 1010.0},
        {"event": "end", "trial_id": "b", "time": 1030.0},
        {"event": "end", "trial_id": "c", "time": 1030.0},  # c was never restarted: not counted after the kill
    ]
    t = trial_times(ev)
    assert t["a"].slot_s == 40 and t["b"].slot_s == 50 + 20 and t["b"].attempts == 2
    assert t["c"].slot_s == 0 and t["b"].first_start == 10 and t["b"].last_end == 1030
    u = utilisation(ev, slots=2)
    # run 1: busy 40 + 50 + 0 over makespan 10..60 = 50; run 2: busy 20 over 1010..1030 = 20.
    assert u["busy_s"] == 110 and u["makespan_s"] == 70 and u["utilisation"] == pytest.approx(110 / 140)
    (tmp_path / "e.jsonl").write_text("\n".join(json.dumps(e) for e in ev) + "\n{torn")
    from npsemiseg.tune.timing import read_events

    assert len(read_events(tmp_path / "e.jsonl")) == len(ev)


def test_training_time_continues_across_restores(monkeypatch) -> None:
    """The worker context adds the training time to every report and checkpoint, starting from the resumed
    checkpoint's value (not from zero)."""
    from npsemiseg.distributed.context import RayContext
    from npsemiseg.tune import worker as T

    sent = []
    monkeypatch.setattr(RayContext, "__init__", lambda self, cfg, fail_at_step=-1: None)
    monkeypatch.setattr(RayContext, "resume_state", lambda self: {"step": 20, T.CKPT_TRAIN_TIME: 100.0})
    monkeypatch.setattr(RayContext, "report", lambda self, m, c=None: sent.append((m, c)))
    ctx = T.TimedContext(cfg=None)
    ctx.report({"step": 1})
    assert sent[-1][0]["time/train_s"] < 100  # a fresh run counts from its own start
    assert ctx.resume_state()["step"] == 20
    ctx.report({"step": 21, "val/miou": 0.5}, {"model": {}})
    metrics, ckpt = sent[-1]
    assert 100 <= metrics["time/train_s"] < 110 and ckpt[T.CKPT_TRAIN_TIME] == metrics["time/train_s"]
    assert metrics["val/miou"] == 0.5 and "model" in ckpt


def test_importances_only_with_enough_full_budget_trials(tmp_path: Path) -> None:
    from npsemiseg.tune.common import MIN_TRIALS_FOR_IMPORTANCE
    from npsemiseg.tune.summary import importances, summary_text

    storage = journal_storage(tmp_path / "journal.log")
    for split, n in (("few", MIN_TRIALS_FOR_IMPORTANCE - 1), ("many", MIN_TRIALS_FOR_IMPORTANCE)):
        study = optuna.create_study(study_name=f"exp/{split}", storage=storage, direction="maximize",
                                    sampler=optuna.samplers.RandomSampler(seed=0))
        study.optimize(lambda t: t.suggest_float("a", 0, 1) + 0.01 * t.suggest_float("b", 0, 1), n_trials=n)
        study.add_trial(optuna.trial.create_trial(state=STATE.PRUNED, params={"a": 0.5, "b": 0.5}, distributions={
            "a": FloatDistribution(0, 1), "b": FloatDistribution(0, 1)}, intermediate_values={20: 0.1}))
    imp = importances(tmp_path / "journal.log", "exp", ["few", "many"])
    assert imp["few"] == {"n_complete": 7, "reason": "7 full-budget trial(s); importances need >= 8"}
    assert imp["many"]["n_complete"] == 8 and imp["many"]["importances"]["a"] > imp["many"]["importances"]["b"]
    import pandas as pd

    df = pd.DataFrame([{"split": "many", "trial_id": "x", "full_budget": True, "best_miou": 0.5, "status": "COMPLETE",
                        "train_time_s": 3600.0, "gpu_hours": 2.0, "cpu_hours": 16.0, "placement_s": 30.0,
                        "queued_s": 5.0}])
    meta = {"params": [], "importances": imp,
            "slot_utilisation": {"busy_s": 90.0, "makespan_s": 50.0, "slots": 2, "utilisation": 0.9}}
    text = summary_text(df, meta)
    assert "cost: 1.000 trial-hours of training = 2.000 GPU-hours, 16.000 CPU-hours" in text
    assert "slot utilisation: 90.0 % (90 s of trial time in 2 slots x 50 s)" in text
    assert "importances few: not shown (7 full-budget trial(s); importances need >= 8)" in text
    assert "importances many (8 full-budget trials): a " in text
