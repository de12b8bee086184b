"""Tune callbacks of the sweep driver: results and journal to storage as trials end; Ray's loggers minus TensorBoard.

``storage_callbacks(settings)`` goes into the sweep Tuner's ``RunConfig(callbacks=...)`` (after ``TrialEvents``).
Passing Tune's CSV and JSON loggers explicitly and setting ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1`` keeps the files
Tune's result loading needs (progress.csv, result.json) but drops Ray's automatic TensorBoard logger, whose extra
event file per trial (keyed by training_iteration) duplicated each trial's own TensorBoard run (keyed by step).
"""
from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

from ray.tune import Callback
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from npsemiseg.tune.common import JOURNAL, SPLIT_KEY
from npsemiseg.tune.storage import active, experiment_storage, mirrors, sync_up


def storage_callbacks(settings: Any, split: str | None = None) -> list[Callback]:
    """The Tuner's storage callbacks (and the env switch that keeps Ray's TensorBoard logger out); ``split=None``
    reads each trial's split from its config."""
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    return [CSVLoggerCallback(), JsonLoggerCallback(), StorageCallback(settings.experiment, split)]


# One background writer per driver: plots (~2 s on the demo) and uploads run there, in order, so the Tune loop goes
# on starting trials; the tables themselves are written on the loop (milliseconds), so no row can be lost.
_WRITER: ThreadPoolExecutor | None = None
_PENDING: list[Future] = []


def _submit(job: Any) -> None:
    global _WRITER
    if _WRITER is None:
        _WRITER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweep-writer")
    _PENDING.append(_WRITER.submit(job))


def drain() -> None:
    """Wait for the background plot/upload jobs (before the sweep writes its final tables and plots); the first
    job that failed raises here."""
    while _PENDING:
        _PENDING.pop(0).result()


class StorageCallback(Callback):
    """Rewrites the results table, history, Pareto table and plots when a trial ends and mirrors them (+ the journal
    and the trial events) to storage.

    Rows of trials this driver did not see end (an earlier head) are kept from the table already there. The table
    written at the end of the sweep (from Tune's ``ResultGrid``) replaces these rows.
    ``split=None`` (one Tuner for all splits): each trial's split is read from its config (``data.split``).
    """

    def __init__(self, experiment: str, split: str | None, upload_every_s: float = 10.0) -> None:
        self.experiment = experiment
        self.split = split
        self.upload_every_s = upload_every_s
        self._history: dict[str, list[dict[str, Any]]] = {}
        self._last_upload = 0.0
        self._static: dict[str, Any] | None = None  # split checksums, version, commit: computed once per driver

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)  # Tune pickles callbacks into its experiment state: keep it small
        state["_history"], state["_static"] = {}, None
        return state

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
        drain()
        self._upload_journal(force=True)

    def _write(self, trial: Any, error: BaseException | None) -> None:
        from npsemiseg.tune import results as R

        s = self.settings
        ctx = R.sweep_context(s, s.max_concurrent, static=self._static)
        self._static = {k: ctx[k] for k in R.STATIC_CONTEXT}
        write_trial_row(s, trial, self._history.get(trial.trial_id, []), error, ctx, self.split)
        self._last_upload = time.time()


def split_of(trial: Any) -> str:
    """The label split a trial belongs to, from its config (the searcher puts it under ``data.split``)."""
    config = getattr(trial, "config", None) or {}
    if config.get(SPLIT_KEY):
        return str(config[SPLIT_KEY])
    raise KeyError(f"trial {trial.trial_id}: no split in its config (looked for {SPLIT_KEY})")


def write_trial_row(settings: Any, trial: Any, history: list[dict[str, Any]], error: BaseException | None,
                    ctx: dict[str, Any], split: str | None = None) -> None:
    """Insert (or replace) ``trial``'s row and history in the experiment's tables, rewrite plots, mirror to storage.

    ``ctx`` is ``results.sweep_context`` (Optuna trials, trial times, checksums, version)."""
    import pandas as pd

    from npsemiseg.tune import results as R

    exp_dir = settings.experiment_dir
    config = {**(trial.config or {}), SPLIT_KEY: split or split_of(trial)}
    res = SimpleNamespace(metrics={**dict(trial.last_result or {}), "trial_id": trial.trial_id}, config=config,
                          metrics_dataframe=pd.DataFrame(history), path=str(getattr(trial, "path", "") or ""),
                          error=error)
    row, hist = R.trial_row(settings, res, ctx)
    df = pd.read_parquet(exp_dir / R.RESULTS) if (exp_dir / R.RESULTS).is_file() else pd.DataFrame()
    old = pd.read_parquet(exp_dir / R.HISTORY) if (exp_dir / R.HISTORY).is_file() else pd.DataFrame()
    if len(df):
        df = df[df["trial_id"] != row["trial_id"]]
    if len(old):
        old = old[old["trial_id"] != row["trial_id"]]
    df = pd.concat([df, pd.DataFrame([row])], ignore_index=True) if len(df) else pd.DataFrame([row])
    hist = pd.concat([old, hist], ignore_index=True) if len(old) else hist
    meta = R.metadata(settings, ctx)
    R.write_results(exp_dir, df, hist, meta, plots=False)

    def plots_and_upload() -> None:
        from npsemiseg.tune.plots import write_plots

        write_plots(exp_dir, df, hist, meta)
        sync_up(settings)

    _submit(plots_and_upload)
