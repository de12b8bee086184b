"""Run a sweep: ONE Ray Tune ``Tuner`` for every label split, one seeded Optuna study per split.

All splits share the sweep's trial slots (``--max-concurrent`` counts the whole sweep): ``SplitSearcher`` hands
each new trial to the split with the fewest trials and asks that split's study for its parameters, and
``SplitRungScheduler`` stops trials by comparing them only with trials of the same split. Ray's Tune FAQ calls
several Tuners in one cluster "not officially supported" (they compete for resources, and only one can own the
signal handlers), hence one Tuner.

Layout of an experiment (``<storage_root>/<experiment>/``)::

    optuna_journal.log     Optuna studies "<experiment>/<split>" (optuna-dashboard opens this file)
    trial_events.jsonl     trial start/end times (slot utilisation, queue/placement time)
    tune/                  the sweep's Tune experiment (restorable with Tuner.restore)
    tune/trial_<id>/tb/    each trial's TensorBoard run (scalars by step + HParams)
    <trial_id>/            each trial's Ray Train run "<experiment>/<trial_id>" with its checkpoints
    results.parquet/.csv   one row per trial (npsemiseg.tune.results), history.parquet, pareto.*
    plots/, exports/<split>/

The tables are rewritten as each trial ends (``callbacks.StorageCallback``), so partial results can be read
mid-sweep. With a remote ``storage_root`` (``s3://...``, ``gs://...``) the Tune experiment and Train runs live
there (so trials survive node loss); the driver keeps the journal, events, tables, plots and exports in the local
``<local_dir>/<experiment>/`` and mirrors them to the storage as trials end (``npsemiseg.tune.storage``), so a
new head with an empty disk restores the sweep from the storage alone. After the sweep each trial keeps only the
checkpoint its row points to (``retention``; ``--keep-checkpoints`` keeps all).

Rerunning the same command resumes: the Tune experiment is restored (finished trials are not rerun, unfinished and
errored ones restart and their Train runs continue from their last checkpoints) and the studies continue in the
journal (a resumed errored trial's outcome is added as a new Optuna trial with the same parameters).
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npsemiseg.errors import UserError
from npsemiseg.tune.common import (
    ASHA_DEFAULTS,
    BUDGETS,
    EVENTS,
    JOURNAL,
    METRIC,
    OBJECTIVES,
    TUNE_DIR,
    trial_dirname,
)
from npsemiseg.tune.resources import TrialResources
from npsemiseg.tune.space import SearchSpace
from npsemiseg.tune.storage import activate, restore_local, sync_up
from npsemiseg.tune.trial import TrialSpec, run_trial

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_REAL = BUDGETS["real"]


@dataclass
class SweepSettings:
    """One sweep: what to search, over which splits, with what budget and resources."""

    space: SearchSpace
    experiment: str = "sweep"
    storage_root: str = "ray_results"  # a local folder or a URI (s3://bucket/prefix) Tune and Train accept
    local_dir: str = "ray_results"  # with a URI storage_root: where the journal, tables, plots and exports go
    splits: list[str] = field(default_factory=list)  # empty = the space file's splits
    overrides: dict[str, Any] = field(default_factory=dict)  # applied to the recipe for every trial
    num_samples: int = _REAL["trials"]  # trials per split
    max_concurrent: int = _REAL["max_concurrent"]  # trials at once, all splits together
    n_startup_trials: int = _REAL["n_startup_trials"]  # TPE's random start-up trials per split
    seed: int = 0  # each split's sampler seed is derived from it (common.sampler_seed)
    grace_period: int | None = None  # in time_attr units; None = the space file's (or 1/4 of the budget)
    reduction_factor: float | None = None
    time_attr: str | None = None  # "step" or "training_iteration"
    objectives: tuple[str, ...] = ("miou",)
    resources: TrialResources = field(default_factory=TrialResources)
    num_to_keep: int = 2
    max_failures: int = 0  # Tune-level restarts of a trial (each from its last checkpoint); Train's own are 0
    keep_checkpoints: bool = False  # skip retention (keep every trial's --num-to-keep checkpoints)
    checkpoint_period_s: float = 2.0  # TUNE_GLOBAL_CHECKPOINT_S: how stale the restorable experiment state may be
    trainer_factory: Any = None  # test seam for TrialSpec.trainer_factory
    verbose: int = 1
    base: Any = field(init=False, repr=False)  # the validated base Config, built once

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.experiment):
            raise UserError(f"--experiment: use letters, digits, '.', '_' or '-', got {self.experiment!r}")
        self.splits = list(self.splits or self.space.splits)
        if not self.splits:
            raise UserError(f"{self.space.path}: splits: no label split to search (add splits or pass --splits)")
        if self.num_samples < 1:
            raise UserError(f"--trials: must be >= 1, got {self.num_samples}")
        if self.max_concurrent < 1:
            raise UserError(f"--max-concurrent: must be >= 1, got {self.max_concurrent}")
        if self.n_startup_trials < 0:
            raise UserError(f"--n-startup-trials: must be >= 0, got {self.n_startup_trials}")
        bad = [o for o in self.objectives if o not in OBJECTIVES]
        if bad or not self.objectives or self.objectives[0] != "miou" or len(set(self.objectives)) != len(
                self.objectives):
            raise UserError(f"--objectives: use miou, miou,ece or miou,err_auroc, got {','.join(self.objectives)}")
        asha = {**ASHA_DEFAULTS, **self.space.asha}
        self.time_attr = self.time_attr or asha["time_attr"]
        if self.time_attr not in ("step", "training_iteration"):
            raise UserError(f"--time-attr: must be step or training_iteration, got {self.time_attr!r}")
        if self.reduction_factor is None:
            self.reduction_factor = float(asha["reduction_factor"])
        if self.reduction_factor <= 1:
            raise UserError(f"--reduction-factor: must be > 1, got {self.reduction_factor}")
        self.base = self.space.base_config(self.overrides)
        budget = self.max_t()
        if self.grace_period is None:  # from the space file, clamped to a budget shortened by overrides
            self.grace_period = min(int(asha.get("grace_period", max(1, budget // 4))), budget)
        if not 1 <= self.grace_period <= budget:
            raise UserError(f"--grace-period: must be in [1, {budget}] ({self.time_attr}), got {self.grace_period}")

    @property
    def remote(self) -> bool:
        return "://" in self.storage_root

    @property
    def storage_uri(self) -> str:
        """Where Tune and Train write (a URI is passed through untouched; a local path is made absolute)."""
        return self.storage_root.rstrip("/") if self.remote else str(Path(self.storage_root).resolve())

    @property
    def experiment_dir(self) -> Path:
        """The local experiment folder (journal, results, plots, exports; everything when storage is local)."""
        return Path(self.local_dir if self.remote else self.storage_root).resolve() / self.experiment

    @property
    def journal_path(self) -> Path:
        return self.experiment_dir / JOURNAL

    @property
    def events_path(self) -> Path:
        return self.experiment_dir / EVENTS

    @property
    def tune_path(self) -> str:
        """The sweep's Tune experiment (under the storage, local or remote)."""
        return f"{self.storage_uri}/{self.experiment}/{TUNE_DIR}"

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def budget(self) -> int:
        """Training steps of a full-budget trial."""
        return self.base.train.iters

    def base_config(self) -> Any:
        """The recipe + the space's proxy overrides + the user's overrides (validated once, at construction)."""
        return self.base

    def max_t(self, cfg: Any = None) -> int:
        """The full budget in the scheduler's time unit."""
        cfg = cfg or self.base
        if self.time_attr == "step":
            return cfg.train.iters
        return -(-cfg.train.iters // cfg.train.eval_every)

    def metrics_and_modes(self) -> tuple[list[str], list[str]]:
        names = [OBJECTIVES[o] for o in self.objectives]
        return [n for n, _ in names], [m for _, m in names]

    def total_trials(self) -> int:
        return len(self.splits) * self.num_samples


def make_searcher(settings: SweepSettings) -> Any:
    """One ``SplitSearcher`` over a seeded TPE study per split, in the experiment's journal."""
    from npsemiseg.tune.searcher import SplitSearcher

    metrics, modes = settings.metrics_and_modes()
    return SplitSearcher(
        experiment=settings.experiment, splits=settings.splits, trials_per_split=settings.num_samples,
        distributions=settings.space.optuna_distributions(), metrics=metrics, modes=modes,
        journal=str(settings.journal_path), experiment_dir=str(settings.experiment_dir), budget=settings.budget,
        seed=settings.seed, n_startup_trials=settings.n_startup_trials, concurrent=settings.max_concurrent > 1,
    )


def make_scheduler(settings: SweepSettings) -> Any:
    """Successive halving per split on every objective (a trial survives a rung if it is good on any)."""
    from npsemiseg.tune.scheduler import SplitRungScheduler

    metrics, modes = settings.metrics_and_modes()
    return SplitRungScheduler(time_attr=settings.time_attr, metrics=metrics, modes=modes, max_t=settings.max_t(),
                              grace_period=settings.grace_period, reduction_factor=settings.reduction_factor)


def trial_spec(settings: SweepSettings) -> TrialSpec:
    """What every trial shares (Train runs go to ``<storage>/<experiment>/<trial_id>``)."""
    return TrialSpec(
        base=settings.base.to_dict(), experiment=settings.experiment, storage_root=settings.storage_uri,
        resources=settings.resources, num_to_keep=settings.num_to_keep,
        trainer_factory=settings.trainer_factory,
    )


def make_trainable(settings: SweepSettings) -> Any:
    from ray import tune  # [1] the trial function, with its spec attached and a sliver of CPU for itself

    from npsemiseg.tune.placement import trial_driver_resources  # on the head: a lost GPU node never takes it

    return tune.with_resources(tune.with_parameters(run_trial, spec=trial_spec(settings)), trial_driver_resources())


def make_tuner(settings: SweepSettings, trainable: Any) -> Any:
    """A new ``Tuner`` or, when the experiment exists, the restored one (returns (tuner, restored))."""
    from ray import tune

    from npsemiseg.tune.callbacks import storage_callbacks
    from npsemiseg.tune.timing import TrialEvents

    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = str(settings.checkpoint_period_s)
    if tune.Tuner.can_restore(settings.tune_path):
        print(f"[sweep] resuming {settings.tune_path}", flush=True)
        # [2] restore: finished trials keep their results, unfinished and errored ones restart from their Train
        #     checkpoints (the searcher adds a resumed errored trial's outcome to its study as a new trial)
        return tune.Tuner.restore(settings.tune_path, trainable=trainable, resume_unfinished=True,
                                  resume_errored=True), True
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(  # [3] one searcher + one scheduler for every split; one slot pool
            search_alg=make_searcher(settings), scheduler=make_scheduler(settings),
            num_samples=settings.total_trials(), max_concurrent_trials=settings.max_concurrent,
            trial_dirname_creator=trial_dirname, reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR, storage_path=f"{settings.storage_uri}/{settings.experiment}", verbose=settings.verbose,
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            # events first (the rows read them), then Ray's CSV/JSON loggers and the per-trial table + storage mirror
            callbacks=[TrialEvents(str(settings.events_path)), *storage_callbacks(settings)],
        ),
    ), False


def slots(settings: SweepSettings, cluster: dict[str, float] | None) -> int:
    """Trials that can run at once: --max-concurrent, capped by the sweep's size and what fits on the cluster."""
    n = min(settings.max_concurrent, settings.total_trials())
    fit_now = settings.resources.fits(cluster) if cluster else 0
    return min(n, fit_now) if fit_now >= 1 else n


def fit(settings: SweepSettings) -> Any:
    """Fit (or restore and finish) the sweep's Tuner; returns its ``ResultGrid``."""
    from npsemiseg.tune.timing import append_event

    tuner, _ = make_tuner(settings, make_trainable(settings))
    append_event(settings.events_path, "sweep_start", slots=settings.max_concurrent)
    grid = tuner.fit()
    append_event(settings.events_path, "sweep_end")
    # Tune returns normally after Ctrl-C (it saved its state): do not write results for a half-finished sweep.
    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", [])
    if any(t.status not in ("TERMINATED", "ERROR") for t in trials):
        raise KeyboardInterrupt("sweep interrupted with unfinished trials")
    n = make_searcher(settings).fail_orphans({t.trial_id for t in trials})
    if n:
        print(f"[sweep] {n} Optuna trial(s) asked for before the driver stopped were never run: marked FAIL",
              flush=True)
    return grid


def plan_lines(settings: SweepSettings, cluster: dict[str, float] | None = None) -> list[str]:
    """The human-readable plan printed before any trial starts."""
    cfg = settings.base
    metrics, modes = settings.metrics_and_modes()
    rule = "on every objective (a trial good on any one survives)" if settings.multi_objective else f"on {METRIC}"
    sampler = "multi-objective TPE" if settings.multi_objective else "TPE"
    lines = [
        f"experiment   {settings.experiment_dir}"
        + (f" (trials and checkpoints in {settings.storage_uri}/{settings.experiment})" if settings.remote else ""),
        f"recipe       {settings.space.recipe or '(defaults)'} + {settings.space.path}",
        f"splits       {len(settings.splits)} x {settings.num_samples} trials = {settings.total_trials()} trials, "
        f"one shared pool of trial slots: {', '.join(settings.splits)}",
        f"search       one Optuna {sampler} study per split (seeds derived from --seed {settings.seed}, "
        f"{settings.n_startup_trials} start-up trials"
        f"{', constant liar' if settings.max_concurrent > 1 else ''}) over {', '.join(settings.space.keys)}",
        f"objective    {', '.join(f'{m} ({d})' for m, d in zip(metrics, modes))}",
        f"budget       {cfg.train.iters} steps per trial (eval every {cfg.train.eval_every}); successive halving per "
        f"split {rule}: {settings.time_attr}, grace {settings.grace_period}, reduction {settings.reduction_factor:g}",
        f"resources    {settings.resources.describe()}; at most {settings.max_concurrent} trials at once (all splits)",
    ]
    if cluster is not None:
        fit_now = settings.resources.fits(cluster)
        have = ", ".join(f"{k} {v:g}" for k, v in sorted(cluster.items()) if k in ("CPU", "GPU"))
        lines.append(f"cluster      {have} -> {fit_now} trial(s) fit at once now")
        if fit_now < 1:
            lines.append("warning      no trial fits on the cluster yet (an autoscaler may add nodes)")
        elif slots(settings, cluster) < slots(settings, None):  # fewer fit now than the sweep would run at once
            lines.append(f"warning      only {fit_now} of --max-concurrent {settings.max_concurrent} trials fit now; "
                         "the others wait for their workers (an autoscaler may add nodes)")
    return lines


def run_sweep(settings: SweepSettings, export: bool = True) -> Any:
    """Run the sweep, then write results, plots and exports; returns the results as a pandas DataFrame.

    Raises ``SplitsFailed`` (after writing everything) when every trial of a split errored."""
    import ray

    from npsemiseg.tune import results as R
    from npsemiseg.tune.callbacks import drain
    from npsemiseg.tune.preflight import SplitsFailed, errors_from_grid, failed_split_lines
    from npsemiseg.tune.summary import summary_text

    if not ray.is_initialized():
        raise RuntimeError("run_sweep needs Ray initialised (npsemiseg.tune.session.connect)")
    cluster = ray.cluster_resources()
    for line in plan_lines(settings, cluster):
        print(f"[plan] {line}", flush=True)
    t0 = time.time()
    activate(settings)  # the StorageCallback (also one restored from tuner.pkl) finds these settings
    restore_local(settings)  # a new head downloads the journal, events and tables from the storage
    grid = fit(settings)
    drain()  # the per-trial plot/upload jobs finish before the final tables and plots are written
    df, hist, meta = R.collect(settings, grid, slots=slots(settings, cluster))
    if not settings.keep_checkpoints:  # each trial keeps only the checkpoint its row points to
        from npsemiseg.tune.retention import apply_retention

        kept = apply_retention(settings, df)
        hist = R.drop_checkpoints(hist, kept.paths)  # no history row names a deleted checkpoint
        meta["retention"] = {"removed": kept.removed, "freed_bytes": kept.freed_bytes,
                             "kept": kept.kept, "kept_bytes": kept.kept_bytes}
    R.write_results(settings.experiment_dir, df, hist, meta)
    print(summary_text(df, meta), flush=True)
    if export:
        from npsemiseg.tune.export import export_experiment

        export_experiment(settings.experiment_dir)
    sync_up(settings, exports=True)  # final journal, events, tables, plots and exports -> storage
    failed = failed_split_lines(errors_from_grid(grid))
    if failed:
        raise SplitsFailed(failed)
    print(f"[sweep] done in {time.time() - t0:.0f} s; results in {settings.experiment_dir}", flush=True)
    return df
