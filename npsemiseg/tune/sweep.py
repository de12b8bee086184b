"""Run a sweep: one Ray Tune ``Tuner`` with its own seeded Optuna TPE study and ASHA per label split.

Layout of an experiment (``<storage_root>/<experiment>/``)::

    optuna_journal.log     Optuna studies "<experiment>/<split>" (optuna-dashboard opens this file)
    <split_slug>/          the split's Tune experiment (restorable with Tuner.restore)
    <trial_id>/            each trial's Ray Train run "<experiment>/<trial_id>" with its checkpoints
    results.parquet/.csv   one row per trial (npsemiseg.tune.results), history.parquet, pareto.*
    plots/, exports/<split>/

With a remote ``storage_root`` (``s3://...``, ``gs://...``) the Tune experiments and Train runs live there (so trials
survive node loss) while the journal, tables, plots and exports stay in the local ``<local_dir>/<experiment>/``.

Rerunning the same command resumes: a split whose Tune directory can be restored is restored (finished trials are
not rerun, unfinished ones restart and their Train runs continue from their last checkpoints).
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npsemiseg.errors import UserError
from npsemiseg.tune.resources import TrialResources
from npsemiseg.tune.space import SearchSpace
from npsemiseg.tune.storage import activate, restore_local, sync_up  # cluster-hook
from npsemiseg.tune.trial import TrialSpec, run_trial

METRIC = "val/miou"
# Secondary objectives of the multi-objective option and the direction Optuna optimises them in.
OBJECTIVES = {"miou": ("val/miou", "max"), "ece": ("val/ece", "min"), "err_auroc": ("val/err_auroc", "max")}
JOURNAL = "optuna_journal.log"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class SweepSettings:
    """One sweep: what to search, over which splits, with what budget and resources."""

    space: SearchSpace
    experiment: str = "sweep"
    storage_root: str = "ray_results"  # a local folder or a URI (s3://bucket/prefix) Tune and Train accept
    local_dir: str = "ray_results"  # with a URI storage_root: where the journal, tables, plots and exports go
    splits: list[str] = field(default_factory=list)  # empty = the space file's splits
    overrides: dict[str, Any] = field(default_factory=dict)  # applied to the recipe for every trial
    num_samples: int = 8  # trials per split
    max_concurrent: int = 2
    n_startup_trials: int = 10  # TPE's random start-up trials
    seed: int = 0
    grace_period: int | None = None  # in time_attr units; None = the space file's (or 1/4 of the budget)
    reduction_factor: float | None = None
    time_attr: str | None = None  # "step" or "training_iteration"
    objectives: tuple[str, ...] = ("miou",)
    resources: TrialResources = field(default_factory=TrialResources)
    num_to_keep: int = 2
    max_failures: int = 0
    keep_checkpoints: bool = False  # cluster-hook: skip retention (keep every trial's --num-to-keep checkpoints)
    checkpoint_period_s: float = 2.0  # TUNE_GLOBAL_CHECKPOINT_S: how stale the restorable experiment state may be
    trainer_factory: Any = None  # test seam for TrialSpec.trainer_factory
    verbose: int = 1

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
        asha = self.space.asha
        self.time_attr = self.time_attr or asha.get("time_attr", "step")
        if self.time_attr not in ("step", "training_iteration"):
            raise UserError(f"--time-attr: must be step or training_iteration, got {self.time_attr!r}")
        if self.reduction_factor is None:
            self.reduction_factor = float(asha.get("reduction_factor", 2))
        if self.reduction_factor <= 1:
            raise UserError(f"--reduction-factor: must be > 1, got {self.reduction_factor}")
        base = self.base_config()
        if self.grace_period is None:  # from the space file, clamped to a budget shortened by overrides
            self.grace_period = min(int(asha.get("grace_period", max(1, self.max_t(base) // 4))), self.max_t(base))
        if not 1 <= self.grace_period <= self.max_t(base):
            raise UserError(f"--grace-period: must be in [1, {self.max_t(base)}] ({self.time_attr}), "
                            f"got {self.grace_period}")

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

    def tune_path(self, split: str) -> str:
        """The split's Tune experiment (under the storage, local or remote)."""
        return f"{self.storage_uri}/{self.experiment}/{split_slug(split)}"

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def base_config(self) -> Any:
        """The recipe + the space's proxy overrides + the user's overrides (validated)."""
        return self.space.base_config(self.overrides)

    def max_t(self, cfg: Any) -> int:
        """The full budget in ASHA's time unit."""
        if self.time_attr == "step":
            return cfg.train.iters
        return -(-cfg.train.iters // cfg.train.eval_every)

    def metrics_and_modes(self) -> tuple[list[str], list[str]]:
        names = [OBJECTIVES[o] for o in self.objectives]
        return [n for n, _ in names], [m for _, m in names]


def split_slug(split: str) -> str:
    """A directory name for a split name (``demo/1_8`` -> ``demo_1_8``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", split).strip("_")


def study_name(experiment: str, split: str) -> str:
    return f"{experiment}/{split}"


def journal_storage(experiment_dir: Path) -> Any:
    """The experiment's Optuna journal storage (a plain log file optuna-dashboard can open)."""
    import optuna

    experiment_dir.mkdir(parents=True, exist_ok=True)
    backend = optuna.storages.journal.JournalFileBackend(str(experiment_dir / JOURNAL))
    return optuna.storages.JournalStorage(backend)


def trial_dirname(trial: Any) -> str:
    """Short Tune trial directory names (the params are in the results table, not the path)."""
    return f"trial_{trial.trial_id}"


def make_searcher(settings: SweepSettings, split: str) -> Any:
    """A seeded TPE ``OptunaSearch`` whose study ``<experiment>/<split>`` lives in the journal file."""
    import optuna

    from npsemiseg.tune.resumable import ResumableOptunaSearch as OptunaSearch  # cluster-hook: resumed FAIL trials

    metrics, modes = settings.metrics_and_modes()
    sampler = optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=settings.n_startup_trials)
    multi = settings.multi_objective
    return OptunaSearch(
        space=settings.space.optuna_distributions(),
        metric=metrics if multi else metrics[0],
        mode=modes if multi else modes[0],
        sampler=sampler,
        study_name=study_name(settings.experiment, split),
        storage=journal_storage(settings.experiment_dir),
    )


def make_scheduler(settings: SweepSettings) -> Any:
    """ASHA on val/miou; trials it stops are told to Optuna as COMPLETE with their last value."""
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr=settings.time_attr, metric=METRIC, mode="max", max_t=settings.max_t(settings.base_config()),
        grace_period=settings.grace_period, reduction_factor=settings.reduction_factor,
    )


def trial_spec(settings: SweepSettings, split: str) -> TrialSpec:
    """What every trial of ``split`` shares (Train runs go to ``<storage>/<experiment>/<trial_id>``)."""
    return TrialSpec(
        base=settings.base_config().to_dict(), split=split, experiment=settings.experiment,
        storage_root=settings.storage_uri, resources=settings.resources,
        num_to_keep=settings.num_to_keep, max_failures=settings.max_failures,
        trainer_factory=settings.trainer_factory,
    )


def make_trainable(settings: SweepSettings, split: str) -> Any:
    from ray import tune

    spec = trial_spec(settings, split)
    from npsemiseg.tune.placement import trial_driver_resources  # cluster-hook: trial functions on the head

    return tune.with_resources(tune.with_parameters(run_trial, spec=spec), trial_driver_resources())  # cluster-hook


def run_split(settings: SweepSettings, split: str) -> Any:
    """Fit (or restore and finish) the split's Tuner; returns its ``ResultGrid``."""
    from ray import tune

    from npsemiseg.tune.callbacks import storage_callbacks  # cluster-hook

    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = str(settings.checkpoint_period_s)
    path = settings.tune_path(split)
    trainable = make_trainable(settings, split)
    if tune.Tuner.can_restore(path):
        print(f"[sweep] {split}: resuming {path}", flush=True)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)  # cluster-hook: errored trials continue from checkpoints
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=make_searcher(settings, split), scheduler=make_scheduler(settings),
                num_samples=settings.num_samples, max_concurrent_trials=settings.max_concurrent,
                trial_dirname_creator=trial_dirname, reuse_actors=False,
            ),
            run_config=tune.RunConfig(
                name=split_slug(split), storage_path=f"{settings.storage_uri}/{settings.experiment}",
                verbose=settings.verbose,
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                callbacks=storage_callbacks(settings, split),  # cluster-hook: tables+journal to storage, no dup TB
            ),
        )
    grid = tuner.fit()
    # Tune returns normally after Ctrl-C (it saved its state): stop here rather than start the next split.
    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", [])
    if any(t.status not in ("TERMINATED", "ERROR") for t in trials):
        raise KeyboardInterrupt(f"{split}: sweep interrupted with unfinished trials")
    return grid


def plan_lines(settings: SweepSettings, cluster: dict[str, float] | None = None) -> list[str]:
    """The human-readable plan printed before any trial starts."""
    cfg = settings.base_config()
    metrics, modes = settings.metrics_and_modes()
    lines = [
        f"experiment   {settings.experiment_dir}"
        + (f" (trials and checkpoints in {settings.storage_uri}/{settings.experiment})" if settings.remote else ""),
        f"recipe       {settings.space.recipe or '(defaults)'} + {settings.space.path}",
        f"splits       {len(settings.splits)} x {settings.num_samples} trials = "
        f"{len(settings.splits) * settings.num_samples} trials: {', '.join(settings.splits)}",
        f"search       Optuna TPE (seed {settings.seed}, {settings.n_startup_trials} start-up trials) over "
        f"{', '.join(settings.space.keys)}",
        f"objective    {', '.join(f'{m} ({d})' for m, d in zip(metrics, modes))}",
        f"budget       {cfg.train.iters} steps per trial (eval every {cfg.train.eval_every}); ASHA on {METRIC}: "
        f"{settings.time_attr}, grace {settings.grace_period}, reduction {settings.reduction_factor:g}",
        f"resources    {settings.resources.describe()}; at most {settings.max_concurrent} trials at once",
    ]
    if cluster is not None:
        fit = settings.resources.fits(cluster)
        have = ", ".join(f"{k} {v:g}" for k, v in sorted(cluster.items()) if k in ("CPU", "GPU"))
        lines.append(f"cluster      {have} -> {fit} trial(s) fit at once now")
        if fit < 1:
            lines.append("warning      no trial fits on the cluster yet (an autoscaler may add nodes)")
    return lines


def run_sweep(settings: SweepSettings, export: bool = True) -> Any:
    """Run every split, then write results, plots and exports; returns the results as a pandas DataFrame."""
    import ray

    from npsemiseg.tune import results as R

    if not ray.is_initialized():
        raise RuntimeError("run_sweep needs Ray initialised (npsemiseg.tune.session.connect)")
    for line in plan_lines(settings, ray.cluster_resources()):
        print(f"[plan] {line}", flush=True)
    t0 = time.time()
    activate(settings)  # cluster-hook: StorageCallback finds these settings (also when restored from tuner.pkl)
    restore_local(settings)  # cluster-hook: a new head downloads the journal + tables from the storage
    grids = {}
    for split in settings.splits:
        grids[split] = run_split(settings, split)
    df, hist = R.collect(settings, grids)
    R.write_results(settings.experiment_dir, df, hist, settings)
    print(R.summary_text(df, settings.space.keys), flush=True)
    if export:
        from npsemiseg.tune.export import export_experiment

        export_experiment(settings.experiment_dir)
    from npsemiseg.tune.preflight import SplitsFailed, errors_from_grids, failed_split_lines  # cluster-hook
    from npsemiseg.tune.retention import apply_retention  # cluster-hook

    sync_up(settings, exports=True)  # cluster-hook: final tables, plots, exports, journal -> storage
    if not settings.keep_checkpoints:  # cluster-hook
        apply_retention(settings, df)  # cluster-hook: keep only each row's checkpoint
    failed = failed_split_lines(errors_from_grids(grids))  # cluster-hook: every trial of a split errored
    if failed:  # cluster-hook
        raise SplitsFailed(failed)  # cluster-hook
    print(f"[sweep] done in {time.time() - t0:.0f} s; results in {settings.experiment_dir}", flush=True)
    return df
