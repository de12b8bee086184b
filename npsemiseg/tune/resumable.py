"""An ``OptunaSearch`` that does not lose a trial Tune resumes after it errored.

Tune tells the searcher once that a trial that used up its retries errored, and Ray's ``OptunaSearch`` marks its
Optuna trial FAIL. A rerun resumes errored trials from their checkpoints (``resume_errored=True``); Ray's searcher
then drops that trial's results ("already finished") and Optuna cannot re-tell a finished trial, so the study
would never learn the resumed trial's outcome. Here the outcome is added to the study as a new trial with the same
parameters, the intermediate values of both attempts and the final value(s) (COMPLETE, or PRUNED without a value);
``user_attrs["resumed_from"]`` names the FAIL trial's number.
"""
from __future__ import annotations

from typing import Any

from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch


class ResumableOptunaSearch(OptunaSearch):
    """``OptunaSearch`` + the outcome of trials resumed after a FAIL (state survives save/restore: plain attrs)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._failed: set[str] = set()
        self._resumed: dict[str, dict[int, float]] = {}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in getattr(self, "_failed", ()):
            if not isinstance(self.metric, list) and self.metric in result:
                self._resumed.setdefault(trial_id, {})[int(result[TRAINING_ITERATION])] = float(result[self.metric])
            return
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in getattr(self, "_failed", ()):
            super().on_trial_complete(trial_id, result, error)
            if error:
                self._failed.add(trial_id)
            return
        if error:
            return  # failed again: the FAIL trial stands
        self._add_resumed(trial_id, result or {})
        self._failed.discard(trial_id)

    def _add_resumed(self, trial_id: str, result: dict) -> None:
        import optuna

        ot_trial = self._ot_trials[trial_id]
        frozen = self._ot_study._storage.get_trial(ot_trial._trial_id)
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        vals = [result.get(m) for m in metrics]
        complete = all(v is not None for v in vals)
        inter = {**frozen.intermediate_values, **self._resumed.pop(trial_id, {})}
        kw: dict[str, Any] = {}
        if complete:
            kw = {"values": [float(v) for v in vals]}
        self._ot_study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE if complete else optuna.trial.TrialState.PRUNED,
            params=frozen.params, distributions=frozen.distributions, intermediate_values=inter,
            user_attrs={**frozen.user_attrs, "resumed_from": frozen.number, "tune_trial_id": trial_id}, **kw,
        ))
