"""ResumableOptunaSearch (no Ray session needed): an errored trial that a rerun resumes reaches the study."""
from __future__ import annotations

import pickle

import optuna
from optuna.distributions import FloatDistribution

from npsemiseg.tune.resumable import ResumableOptunaSearch

TS = optuna.trial.TrialState


def _search(storage) -> ResumableOptunaSearch:
    return ResumableOptunaSearch(space={"train.lr": FloatDistribution(0.001, 0.1, log=True)}, metric="val/miou",
                                 mode="max", sampler=optuna.samplers.RandomSampler(seed=0), study_name="s",
                                 storage=storage)


def test_resumed_errored_trial_is_added_to_the_study(tmp_path):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.log")))
    s = _search(storage)
    cfg_a, cfg_b = s.suggest("a"), s.suggest("b")
    s.on_trial_result("a", {"val/miou": 0.2, "training_iteration": 1})
    s.on_trial_complete("a", error=True)  # used up its retries
    s.on_trial_result("b", {"val/miou": 0.3, "training_iteration": 1})
    s.on_trial_complete("b", {"val/miou": 0.4, "training_iteration": 2})
    # the driver crashes; a rerun restores the searcher from its saved state and resumes trial "a"
    s.save(str(tmp_path / "searcher.pkl"))
    s2 = _search(storage)
    s2.restore(str(tmp_path / "searcher.pkl"))
    s2.on_trial_result("a", {"val/miou": 0.5, "training_iteration": 2})
    s2.on_trial_complete("a", {"val/miou": 0.6, "training_iteration": 3})
    study = optuna.load_study(study_name="s", storage=storage)
    trials = study.trials
    assert [t.state for t in trials] == [TS.FAIL, TS.COMPLETE, TS.COMPLETE]
    resumed = trials[2]
    assert resumed.params == {"train.lr": cfg_a["train.lr"]} and resumed.value == 0.6
    assert resumed.intermediate_values == {1: 0.2, 2: 0.5} and resumed.user_attrs["resumed_from"] == 0
    assert trials[1].params == {"train.lr": cfg_b["train.lr"]}
    assert study.best_trial.number == 2
    # a second completion message for the same trial changes nothing
    s2.on_trial_complete("a", {"val/miou": 0.9})
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 3
    pickle.dumps(s2.__dict__["_failed"])
