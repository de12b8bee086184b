"""Command line of the sweeps: ``sweeps/voc_search.py``, ``sweeps/cityscapes_search.py`` and ``npsemiseg sweep``.

With no ``--data-root`` the sweep runs on the synthetic demo data (generated under ``--demo-root`` when missing)
on CPU; ``--smoke-test`` is smaller still (CI). With ``--data-root`` (+ ``--use-gpu``) it runs the real recipe on
the cluster Ray finds (``RAY_ADDRESS`` / ``--address``, or a head node started on this machine).
"""
from __future__ import annotations

import argparse
import os  # cluster-hook
import sys
import time
from pathlib import Path
from typing import Any

from npsemiseg.errors import UserError, one_line
from npsemiseg.tune.preflight import SplitsFailed  # cluster-hook
from npsemiseg.tune.resources import DEFAULT_GPU_TRIAL_RESOURCES

REPO = Path(__file__).resolve().parents[2]
CLUSTER_MAX_FAILURES = 3  # cluster-hook: trial restarts (from its last checkpoint) when its node is lost
DATASETS = ("voc", "cityscapes")
# Demo budget (README command 1: two splits on 2 CPU cores in <= 5 minutes) and the smaller CI smoke test.
DEMO = {"trials": 4, "max_concurrent": 2, "n_startup_trials": 2, "num_cpus": 4}
SMOKE = {"trials": 2, "max_concurrent": 2, "n_startup_trials": 1, "num_cpus": 4, "splits": 1,
         "overrides": {"train.iters": 4, "train.eval_every": 2, "data.val_limit": 4}}


def _default_space(dataset: str, demo: bool) -> Path:
    name = "demo.yaml" if demo else f"{dataset}.yaml"
    return REPO / "configs" / "search" / name


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
    g.add_argument("--max-concurrent", type=int, help="trials running at once")
    g.add_argument("--n-startup-trials", type=int, help="TPE's random start-up trials per split")
    g.add_argument("--seed", type=int, default=0, help="TPE sampler seed")
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
    g.add_argument("--experiment", help="experiment name (default <dataset>_demo / _smoke / _search); rerun the "
                                        "same command to resume it")
    g.add_argument("--num-to-keep", type=int, default=2, help="checkpoints kept per trial")
    g.add_argument("--max-failures", type=int,  # cluster-hook: default depends on where the sweep runs
                   help=f"restarts of a failed trial (node lost, spot reclaim), each from its last checkpoint; "
                        f"default {CLUSTER_MAX_FAILURES} on a cluster (--address/RAY_ADDRESS, --use-gpu or a URI "
                        "--storage-path), 0 for a local demo")
    g.add_argument("--keep-checkpoints", action="store_true",  # cluster-hook
                   help="keep every retained checkpoint of every trial after the sweep (default: only the one "
                        "each results row points to)")
    g.add_argument("--no-export", action="store_true", help="skip exporting the best checkpoint per split")
    g.add_argument("--dry-run", action="store_true", help="print the plan and exit (no Ray, no training)")
    g.add_argument("--verbose", action="store_true", help="stream the Train workers' logs to the terminal")


def default_max_failures(args: argparse.Namespace) -> int:  # cluster-hook
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


def settings_from_args(args: argparse.Namespace, dataset: str) -> Any:
    """Turn parsed flags into ``SweepSettings`` (generating the demo data when needed)."""
    from npsemiseg.config import parse_override
    from npsemiseg.tune.resources import TrialResources
    from npsemiseg.tune.space import load_space
    from npsemiseg.tune.sweep import SweepSettings

    demo = args.data_root is None
    space = load_space(args.space or _default_space(dataset, demo))
    budget = SMOKE if args.smoke_test else DEMO
    over: dict[str, Any] = {}
    if demo:
        root = Path(args.demo_root)
        over["data.root"] = str(root.resolve() / dataset) if args.dry_run else str(ensure_demo_data(root, dataset)
                                                                                     .resolve())
        over["data.dataset"] = dataset
        if args.smoke_test:
            over.update(SMOKE["overrides"])
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
        splits = splits[: SMOKE["splits"]]
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else (
        DEFAULT_GPU_TRIAL_RESOURCES["GPU"] if args.use_gpu else 0.0)
    # Default CPUs follow the GPU share: a whole GPU comes with 8 CPUs (a gpu_1x node), half a GPU with 4.
    per_gpu_worker = gpus / max(1, args.workers_per_trial)
    cpus = args.cpus_per_worker if args.cpus_per_worker is not None else (
        max(1.0, DEFAULT_GPU_TRIAL_RESOURCES["CPU"] * per_gpu_worker) if gpus > 0 else 1.0)
    resources = TrialResources(workers=args.workers_per_trial, cpus_per_worker=cpus, gpus_per_trial=gpus)
    if resources.use_gpu:
        over.setdefault("device", "cuda")
    experiment = args.experiment or f"{dataset}_{'smoke' if args.smoke_test else 'demo' if demo else 'search'}"
    trials = args.trials if args.trials is not None else (budget["trials"] if demo else 32)
    return SweepSettings(
        space=space, experiment=experiment, storage_root=args.storage_path, local_dir=args.local_dir,
        splits=splits, overrides=over,
        num_samples=trials,
        max_concurrent=args.max_concurrent or (budget["max_concurrent"] if demo else 4),
        n_startup_trials=args.n_startup_trials if args.n_startup_trials is not None else (
            budget["n_startup_trials"] if demo else 10),
        seed=args.seed, grace_period=args.grace_period, reduction_factor=args.reduction_factor,
        time_attr=args.time_attr, objectives=tuple(_csv(args.objectives)), resources=resources,
        num_to_keep=args.num_to_keep, max_failures=default_max_failures(args),  # cluster-hook
        keep_checkpoints=args.keep_checkpoints,  # cluster-hook
    )


def run_from_args(args: argparse.Namespace, dataset: str) -> int:
    """Plan, connect to Ray, sweep every split, write results and exports."""
    from npsemiseg.tune.sweep import plan_lines, run_sweep

    t0 = time.time()
    settings = settings_from_args(args, dataset)
    if args.num_to_keep < 1:
        raise UserError(f"--num-to-keep: must be >= 1, got {args.num_to_keep}")
    if args.dry_run:
        for line in plan_lines(settings):
            print(f"[plan] {line}")
        return 0
    from npsemiseg.tune.preflight import preflight  # cluster-hook: driver-side checks before Ray starts

    preflight(settings)  # cluster-hook
    from npsemiseg.tune.session import connect

    demo = args.data_root is None
    num_cpus = args.num_cpus or ((SMOKE if args.smoke_test else DEMO)["num_cpus"] if demo else None)
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
    try:
        return run_from_args(args, dataset)
    except UserError as e:
        print(f"{p.prog}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{p.prog}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except SplitsFailed as e:  # cluster-hook: every trial of a split errored -> one line per split, exit 1
        for line in e.lines:  # cluster-hook
            print(f"{p.prog}: error: {line}", file=sys.stderr)  # cluster-hook
        return 1  # cluster-hook


def _cmd_sweep(args: argparse.Namespace) -> int:
    try:  # cluster-hook
        return run_from_args(args, args.dataset)
    except SplitsFailed as e:  # cluster-hook
        for line in e.lines:  # cluster-hook
            print(f"npsemiseg: error: {line}", file=sys.stderr)  # cluster-hook
        return 1  # cluster-hook


def _cmd_summary(args: argparse.Namespace) -> int:
    from npsemiseg.tune.results import read_results, summary_text

    df, meta = read_results(args.experiment)
    print(summary_text(df, meta.get("params", [])))
    return 0


def register(subparsers: Any) -> None:
    """``npsemiseg sweep ...`` and ``npsemiseg sweep-summary EXPERIMENT``."""
    p = subparsers.add_parser("sweep", help="Ray Tune + Optuna sweep, one study per label split")
    add_sweep_args(p, None)
    p.set_defaults(func=_cmd_sweep)
    p = subparsers.add_parser("sweep-summary", help="print a finished sweep's per-split table and best configs")
    p.add_argument("experiment", help="experiment folder (holding results.parquet)")
    p.set_defaults(func=_cmd_summary)
