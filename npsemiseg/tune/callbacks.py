"""Tune callbacks of the sweep driver: results and journal to storage as trials end; Ray's loggers minus TensorBoard.

``storage_callbacks(settings, split)`` goes into the split's ``RunConfig(callbacks=...)``. Passing Tune's CSV and
JSON loggers explicitly and setting ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1`` keeps the files Tune's result loading
needs (progress.csv, result.json) but drops Ray's automatic TensorBoard logger, whose extra event file per trial
(keyed by training_iteration) duplicated each trial's own TensorBoard run (keyed by step).
"""
from __future__ import annotations

import os
import time
from types import SimpleNamespace
from typing import Any

from ray.tune import Callback
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from npsemiseg.tune.storage import JOURNAL, active, experiment_storage, mirrors, sync_up


def storage_callbacks(settings: Any, split: str) -> list[Callback]:
    """The callbacks of one split's Tuner (and the env switch that keeps Ray's TensorBoard logger out)."""
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    return [CSVLoggerCallback(), JsonLoggerCallback(), StorageCallback(settings.experiment, split)]


class StorageCallback(Callback):
    """Rewrites the results table, history and plots when a trial ends and mirrors them (+ the journal) to storage.

    Rows of trials this driver did not see end (an earlier head) are kept from the table already there.
    ``split=None`` (one Tuner for all splits): each trial's split is read from its config (``SPLIT_KEYS``).
    """

    def __init__(self, experiment: str, split: str | None, upload_every_s: float = 10.0) -> None:
        self.experiment = experiment
        self.split = split
        self.upload_every_s = upload_every_s
        self._history: dict[str, list[dict[str, Any]]] = {}
        self._last_upload = 0.0

    @property
    def settings(self) -> Any:
        return active(self.experiment)

    def _upload_journal(self, force: bool = False) -> None:
        s = self.settings
        if not mirrors(s) or (not force and time.time() - self._last_upload < self.upload_every_s):
            return
        journal = s.experiment_dir / JOURNAL
        if journal.is_file():
            experiment_storage(s).put_file(journal, JOURNAL)
        self._last_upload = time.time()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._upload_journal(force=True)  # the searcher has just added the trial to the study

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._history.setdefault(trial.trial_id, []).append(dict(result))
        self._upload_journal()  # intermediate values reach the copy at most upload_every_s late

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write(trial, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        try:
            err = trial.get_error()
        except Exception:  # noqa: BLE001 - the row only needs a reason
            err = None
        self._write(trial, err if err is not None else RuntimeError(f"trial {trial.trial_id} errored"))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._upload_journal(force=True)

    def _write(self, trial: Any, error: BaseException | None) -> None:
        split = self.split or split_of(trial)
        write_trial_row(self.settings, split, trial, self._history.get(trial.trial_id, []), error)
        self._last_upload = time.time()


SPLIT_KEYS = ("split", "data.split")


def split_of(trial: Any) -> str:
    """The label split a trial belongs to, from its config (for a Tuner that runs every split)."""
    config = getattr(trial, "config", None) or {}
    for key in SPLIT_KEYS:
        if config.get(key):
            return str(config[key])
    raise KeyError(f"trial {trial.trial_id}: no split in its config (looked for {', '.join(SPLIT_KEYS)})")


def write_trial_row(settings: Any, split: str, trial: Any, history: list[dict[str, Any]],
                    error: BaseException | None) -> None:
    """Insert (or replace) ``trial``'s row and history in the experiment's tables, rewrite plots, mirror to storage."""
    import pandas as pd

    from npsemiseg.tune import results as R

    exp_dir = settings.experiment_dir
    res = SimpleNamespace(metrics=dict(trial.last_result or {}), metrics_dataframe=pd.DataFrame(history),
                          path=str(getattr(trial, "path", "")), error=error)
    row, hist = R.trial_row(settings, split, res, trial, settings.base_config().train.iters)
    df = pd.read_parquet(exp_dir / R.RESULTS) if (exp_dir / R.RESULTS).is_file() else pd.DataFrame()
    old = pd.read_parquet(exp_dir / R.HISTORY) if (exp_dir / R.HISTORY).is_file() else pd.DataFrame()
    if len(df):
        df = df[df["trial_id"] != row["trial_id"]]
    if len(old):
        old = old[old["trial_id"] != row["trial_id"]]
    df = pd.concat([df, pd.DataFrame([row])], ignore_index=True) if len(df) else pd.DataFrame([row])
    hist = pd.concat([old, hist], ignore_index=True) if len(old) else hist
    R.write_results(exp_dir, df, hist, settings)
    sync_up(settings)
