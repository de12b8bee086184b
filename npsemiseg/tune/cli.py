"""Command line of the sweeps: ``sweeps/voc_search.py``, ``sweeps/cityscapes_search.py`` and ``npsemiseg sweep``.

With no ``--data-root`` the sweep runs on the synthetic demo data (generated under ``--demo-root`` when missing)
on CPU; ``--smoke-test`` is smaller still (CI). With ``--data-root`` (+ ``--use-gpu``) it runs the real recipe on
the cluster Ray finds (``RAY_ADDRESS`` / ``--address``, or a head node started on this machine).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from npsemiseg.errors import UserError, run_guarded
from npsemiseg.tune.common import BUDGETS
from npsemiseg.tune.resources import DEFAULT_GPU_TRIAL_RESOURCES

REPO = Path(__file__).resolve().parents[2]
DATASETS = ("voc", "cityscapes")
CLUSTER_MAX_FAILURES = 3  # trial restarts (each from its last checkpoint) when its node is lost, on a cluster


def _default_space(dataset: str, demo: bool) -> Path:
    name = "demo.yaml" if demo else f"{dataset}.yaml"
    return REPO / "configs" / "search" / name


def default_experiment(args: argparse.Namespace, dataset: str) -> str:
    """``<dataset>_demo`` / ``_smoke`` / ``_search``, plus ``_<stem>`` of a non-default ``--space`` file, so a sweep
    over another space never resumes (and mixes its trials into) the default sweep's experiment."""
    name = f"{dataset}_{'smoke' if args.smoke_test else 'demo' if args.data_root is None else 'search'}"
    if args.space and Path(args.space).resolve() != _default_space(dataset, args.data_root is None).resolve():
        name += f"_{Path(args.space).stem}"
    return name


def add_sweep_args(p: argparse.ArgumentParser, dataset: str | None) -> None:
    """The sweep flags (shared by both scripts and ``npsemiseg sweep``)."""
    if dataset is None:
        p.add_argument("--dataset", choices=DATASETS, default="voc", help="dataset of the sweep (default voc)")
    g = p.add_argument_group("what to search")
    g.add_argument("--space", help="search-space YAML (default configs/search/demo.yaml, or <dataset>.yaml "
                                   "with --data-root)")
    g.add_argument("--data-root", help="real dataset root (VOC: folder holding VOCdevkit/; Cityscapes: folder "
                                       "holding leftImg8bit/ and gtFine/); default: the synthetic demo data")
    g.add_argument("--demo-root", default="demo_data", help="where the synthetic demo data lives / is generated")
    g.add_argument("--splits", help="comma-separated label splits (default: the space file's)")
    g.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                   help="recipe overrides for every trial, e.g. train.iters=200")
    g.add_argument("--objectives", default="miou", help="miou (default), miou,ece or miou,err_auroc (Pareto)")
    g = p.add_argument_group("budget and search")
    g.add_argument("--trials", type=int, help="trials per split")
    g.add_argument("--max-concurrent", type=int, help="trials running at once, all splits together")
    g.add_argument("--n-startup-trials", type=int, help="TPE's random start-up trials per split")
    g.add_argument("--seed", type=int, default=0, help="sweep seed; each split's TPE seed is derived from it")
    g.add_argument("--grace-period", type=int, help="ASHA grace period (in --time-attr units)")
    g.add_argument("--reduction-factor", type=float, help="ASHA reduction factor")
    g.add_argument("--time-attr", choices=("step", "training_iteration"), help="ASHA time unit (default step)")
    g.add_argument("--smoke-test", action="store_true", help="tiny CI sweep: 1 split x 2 trials, a few steps")
    g = p.add_argument_group("resources and storage")
    g.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers (ranks) per trial")
    g.add_argument("--cpus-per-worker", type=float, help="CPUs per worker (default 1; with GPUs 8 per GPU)")
    g.add_argument("--gpus-per-trial", type=float, help="GPUs per trial; a fraction lets trials share a GPU "
                                                        "(one worker only); default 1 with --use-gpu")
    g.add_argument("--use-gpu", action="store_true", help="train on GPUs (implies --gpus-per-trial 1)")
    g.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    g.add_argument("--num-cpus", type=int, help="logical CPUs of a local Ray instance (demo: 4 on any machine)")
    g.add_argument("--storage-path", default="ray_results",
                   help="root of experiment folders: a local/NFS path or a URI (s3://bucket/prefix) for trials and "
                        "checkpoints")
    g.add_argument("--local-dir", default="ray_results",
                   help="with a URI --storage-path: local root for the Optuna journal, tables, plots and exports")
    g.add_argument("--experiment", help="experiment name (default <dataset>_demo / _smoke / _search, + _<space "
                   "stem> with a non-default --space); rerun the same command to resume it")
    g.add_argument("--num-to-keep", type=int, default=2, help="checkpoints kept per trial")
    g.add_argument("--max-failures", type=int,
                   help=f"restarts of a failed trial (node lost, spot reclaim), each from its last checkpoint; "
                        f"default {CLUSTER_MAX_FAILURES} on a cluster (--address/RAY_ADDRESS, --use-gpu or a URI "
                        "--storage-path), 0 for a local demo")
    g.add_argument("--keep-checkpoints", action="store_true",
                   help="keep every retained checkpoint of every trial after the sweep (default: only the one "
                        "each results row points to)")
    g.add_argument("--no-export", action="store_true", help="skip exporting the best checkpoint per split")
    g.add_argument("--dry-run", action="store_true", help="print the plan and exit (no Ray, no training)")
    g.add_argument("--verbose", action="store_true", help="stream the Train workers' logs to the terminal")


def default_max_failures(args: argparse.Namespace) -> int:
    """--max-failures, or CLUSTER_MAX_FAILURES when the sweep runs on a cluster (nodes can disappear), else 0."""
    if args.max_failures is not None:
        if args.max_failures < -1:
            raise UserError(f"--max-failures: must be >= -1 (-1 = forever), got {args.max_failures}")
        return args.max_failures
    cluster = bool(args.address or os.environ.get("RAY_ADDRESS") or args.use_gpu or "://" in args.storage_path)
    return CLUSTER_MAX_FAILURES if cluster else 0


def _csv(s: str | None) -> list[str]:
    return [x.strip() for x in (s or "").split(",") if x.strip()]


def ensure_demo_data(root: Path, dataset: str) -> Path:
    """The synthetic tree for ``dataset`` under ``root``, generated (scale demo) when absent."""
    from npsemiseg.data.synthetic import make_demo_data

    if not (root / "summary.json").is_file():
        print(f"[demo] generating synthetic demo data under {root} ...", flush=True)
        t0 = time.time()
        make_demo_data(root, scale="demo", seed=0)
        print(f"[demo] done in {time.time() - t0:.0f} s", flush=True)
    return root / dataset


def budget_of(args: argparse.Namespace) -> dict[str, Any]:
    """The default budget of this invocation: smoke test, demo (no --data-root) or real."""
    return BUDGETS["smoke" if args.smoke_test else "demo" if args.data_root is None else "real"]


def settings_from_args(args: argparse.Namespace, dataset: str) -> Any:
    """Turn parsed flags into ``SweepSettings`` (generating the demo data when needed)."""
    from npsemiseg.config import parse_override
    from npsemiseg.tune.resources import TrialResources
    from npsemiseg.tune.space import load_space
    from npsemiseg.tune.sweep import SweepSettings

    demo = args.data_root is None
    space = load_space(args.space or _default_space(dataset, demo))
    budget = budget_of(args)
    over: dict[str, Any] = {}
    if demo:
        root = Path(args.demo_root)
        over["data.root"] = str(root.resolve() / dataset) if args.dry_run else str(ensure_demo_data(root, dataset)
                                                                                     .resolve())
        over["data.dataset"] = dataset
        if args.smoke_test:
            over.update(budget["overrides"])
    else:
        root = Path(args.data_root)
        if not root.is_dir():
            raise UserError(f"--data-root: folder not found: {root}")
        over["data.root"] = str(root.resolve())
        over["data.dataset"] = dataset
    for item in args.overrides:
        key, value = parse_override(item)
        if key in space.keys:
            raise UserError(f"--set {key}: this key is searched by {space.path}; edit its range there instead")
        over[key] = value
    splits = _csv(args.splits) or space.splits
    if args.smoke_test and not args.splits:
        splits = splits[: budget["splits"]]
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else (
        DEFAULT_GPU_TRIAL_RESOURCES["GPU"] if args.use_gpu else 0.0)
    # Default CPUs follow the GPU share: a whole GPU comes with 8 CPUs (a gpu_1x node), half a GPU with 4.
    per_gpu_worker = gpus / max(1, args.workers_per_trial)
    cpus = args.cpus_per_worker if args.cpus_per_worker is not None else (
        max(1.0, DEFAULT_GPU_TRIAL_RESOURCES["CPU"] * per_gpu_worker) if gpus > 0 else 1.0)
    resources = TrialResources(workers=args.workers_per_trial, cpus_per_worker=cpus, gpus_per_trial=gpus)
    if resources.use_gpu:
        over.setdefault("device", "cuda")
    experiment = args.experiment or default_experiment(args, dataset)
    return SweepSettings(
        space=space, experiment=experiment, storage_root=args.storage_path, local_dir=args.local_dir,
        splits=splits, overrides=over,
        num_samples=args.trials if args.trials is not None else budget["trials"],
        max_concurrent=args.max_concurrent or budget["max_concurrent"],
        n_startup_trials=args.n_startup_trials if args.n_startup_trials is not None else budget["n_startup_trials"],
        seed=args.seed, grace_period=args.grace_period, reduction_factor=args.reduction_factor,
        time_attr=args.time_attr, objectives=tuple(_csv(args.objectives)), resources=resources,
        num_to_keep=args.num_to_keep, max_failures=default_max_failures(args),
        keep_checkpoints=args.keep_checkpoints,
    )


def run_from_args(args: argparse.Namespace, dataset: str) -> int:
    """Plan, check on the driver, connect to Ray, sweep every split, write results and exports.

    A problem the driver can see (data, split, weights, recipe) stops here with a UserError, before Ray starts; a
    split whose every trial errored raises ``SplitsFailed`` (one line per split, exit 1) after the results."""
    from npsemiseg.tune.sweep import plan_lines, run_sweep

    t0 = time.time()
    settings = settings_from_args(args, dataset)
    if args.num_to_keep < 1:
        raise UserError(f"--num-to-keep: must be >= 1, got {args.num_to_keep}")
    if args.dry_run:
        for line in plan_lines(settings):
            print(f"[plan] {line}")
        return 0
    from npsemiseg.tune.preflight import preflight
    from npsemiseg.tune.session import connect

    preflight(settings)  # what every trial would check first, once, on the driver

    num_cpus = args.num_cpus or budget_of(args)["num_cpus"]
    if num_cpus:  # only used when a local instance is started
        from npsemiseg.tune.resources import local_cpus

        num_cpus = local_cpus(num_cpus, settings.max_concurrent)
    url = connect(address=args.address, use_gpu=settings.resources.use_gpu, num_cpus=num_cpus,
                  log_to_driver=args.verbose)
    print(f"[ray] dashboard: {url or '(not available on this cluster)'}", flush=True)
    settings.verbose = 1
    run_sweep(settings, export=not args.no_export)
    print(f"[sweep] wall time {time.time() - t0:.0f} s (including Ray start-up)", flush=True)
    return 0


def sweep_main(dataset: str, argv: list[str] | None = None) -> int:
    """Entry point of the sweep scripts: exit code 2 with one line for user errors."""
    p = argparse.ArgumentParser(prog=f"{dataset}_search.py",
                                description=f"Ray Tune + Optuna sweep of NP-SemiSeg on {dataset} (per label split)")
    add_sweep_args(p, dataset)
    args = p.parse_args(argv)
    return run_guarded(lambda: run_from_args(args, dataset), p.prog, "interrupted; rerun the same command to resume")


def _cmd_sweep(args: argparse.Namespace) -> int:
    return run_from_args(args, args.dataset)


def _cmd_summary(args: argparse.Namespace) -> int:
    from npsemiseg.tune.results import read_results
    from npsemiseg.tune.summary import summary_text

    df, meta = read_results(args.experiment)
    print(summary_text(df, meta))
    return 0


def register(subparsers: Any) -> None:
    """``npsemiseg sweep ...`` and ``npsemiseg sweep-summary EXPERIMENT``."""
    p = subparsers.add_parser("sweep", help="Ray Tune + Optuna sweep, one study per label split")
    add_sweep_args(p, None)
    p.set_defaults(func=_cmd_sweep)
    p = subparsers.add_parser("sweep-summary", help="print a finished sweep's per-split table and best configs")
    p.add_argument("experiment", help="experiment folder (holding results.parquet)")
    p.set_defaults(func=_cmd_summary)


def register_export(subparsers: Any) -> None:
    """Give the engine's ``export`` command its sweep form: ``--experiment PATH [--split S]``."""
    p = subparsers.choices["export"]
    p.add_argument("--experiment", default=None, help="a finished sweep: export its best trial per split")
    p.add_argument("--split", default=None, help="with --experiment: only this split")
    plain = p.get_default("func")

    def export(args: argparse.Namespace) -> int:
        if not args.experiment:
            if not args.checkpoint or not args.out:
                raise UserError("export: --checkpoint and --out are required (or --experiment PATH)")
            return plain(args)
        if args.checkpoint or args.out:
            raise UserError("export: use either --experiment [--split] or --checkpoint --out, not both")
        from npsemiseg.tune.export import export_experiment

        for split, path in export_experiment(args.experiment, args.split).items():
            print(f"{split}: exported the best full-budget trial to {path}")
        return 0

    p.set_defaults(func=export)
