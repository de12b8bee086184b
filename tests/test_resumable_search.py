"""SplitSearcher (no Ray session needed): an errored trial that a rerun resumes reaches its split's study.

Optuna cannot re-tell a FAIL trial, so the resumed run becomes a new trial with the same parameters."""
from __future__ import annotations

from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution

from npsemiseg.tune.searcher import SplitSearcher, journal_storage

TS = optuna.trial.TrialState
SPLIT = "demo/1_8"


def _search(tmp_path: Path) -> SplitSearcher:
    return SplitSearcher(experiment="exp", splits=[SPLIT], trials_per_split=3,
                         distributions={"train.lr": FloatDistribution(0.001, 0.1, log=True)}, metrics=["val/miou"],
                         modes=["max"], journal=str(tmp_path / "j.log"), experiment_dir=str(tmp_path), budget=30,
                         seed=0, n_startup_trials=5, concurrent=True)


def _study(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name=f"exp/{SPLIT}", storage=journal_storage(tmp_path / "j.log"))


def test_resumed_errored_trial_is_added_to_the_study(tmp_path):
    s = _search(tmp_path)
    cfg_a, cfg_b = s.suggest("a"), s.suggest("b")
    s.on_trial_result("a", {"val/miou": 0.2, "step": 10})
    s.on_trial_complete("a", error=True)  # used up its retries
    s.on_trial_result("b", {"val/miou": 0.3, "step": 10})
    s.on_trial_complete("b", {"val/miou": 0.4, "step": 30})
    # the driver crashes; a rerun restores the searcher from its saved state and resumes trial "a"
    s.save(str(tmp_path / "searcher.pkl"))
    s2 = _search(tmp_path)
    s2.restore(str(tmp_path / "searcher.pkl"))
    s2.on_trial_result("a", {"val/miou": 0.5, "step": 20})
    s2.on_trial_complete("a", {"val/miou": 0.6, "step": 30})
    trials = _study(tmp_path).trials
    assert [t.state for t in trials] == [TS.FAIL, TS.COMPLETE, TS.COMPLETE]
    resumed = trials[2]
    assert resumed.params == {"train.lr": cfg_a["train.lr"]} and resumed.value == 0.6
    assert resumed.intermediate_values == {10: 0.2, 20: 0.5, 30: 0.6}
    assert resumed.user_attrs["resumed_from"] == 0 and resumed.user_attrs["ray_trial_id"] == "a"
    assert resumed.user_attrs["steps"] == 30
    assert trials[1].params == {"train.lr": cfg_b["train.lr"]}
    assert _study(tmp_path).best_trial.number == 2
    # a second completion message for the same trial changes nothing; the split still has one trial to suggest
    s2.on_trial_complete("a", {"val/miou": 0.9, "step": 30})
    assert len(_study(tmp_path).trials) == 3
    assert s2.suggest("c")["data.split"] == SPLIT and s2.suggest("d") == "FINISHED"


def test_resumed_trial_stopped_early_is_pruned_and_a_second_error_stays_fail(tmp_path):
    s = _search(tmp_path)
    s.suggest("a")
    s.suggest("b")
    s.on_trial_result("a", {"val/miou": 0.2, "step": 10})
    s.on_trial_complete("a", error=True)
    s.on_trial_complete("b", {"val/miou": 0.1, "step": 5}, error=True)
    s.on_trial_complete("b", {"val/miou": 0.1, "step": 5}, error=True)  # errors again after the resume
    s.on_trial_complete("a", {"val/miou": 0.35, "step": 20})  # resumed, then stopped by the scheduler at step 20
    trials = _study(tmp_path).trials
    assert [t.state for t in trials] == [TS.FAIL, TS.FAIL, TS.PRUNED]
    assert trials[2].user_attrs["resumed_from"] == 0 and trials[2].value == 0.35
    assert trials[2].intermediate_values == {10: 0.2, 20: 0.35}
    # a driver that died after the resume but before saving the searcher state: the RUNNING resumed trial is reused
    s3 = _search(tmp_path)
    s3.suggest("c")
    s3.on_trial_complete("c", error=True)
    stale = dict(s3.assigned)
    s3.on_trial_result("c", {"val/miou": 0.3, "step": 10})  # resumed -> new RUNNING trial 4
    s3.assigned = stale  # the searcher state saved before that
    s3.on_trial_complete("c", {"val/miou": 0.5, "step": 30})
    trials = _study(tmp_path).trials
    assert [t.state for t in trials] == [TS.FAIL, TS.FAIL, TS.PRUNED, TS.FAIL, TS.COMPLETE]
    assert trials[4].user_attrs["resumed_from"] == 3
