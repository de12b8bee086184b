"""TPE + ASHA vs grid search over the same discretised space, on the synthetic demo data (CPU).

    python benchmarks/tpe_vs_grid.py --seeds 0,1,2   # grid (18 configs, ~20 min on 2 cores) then TPE+ASHA per seed
    python benchmarks/tpe_vs_grid.py --quick         # 2 x 2 grid, for a check that it runs

Grid search runs every configuration of the grid for the full budget. TPE+ASHA searches the same values (each
parameter a categorical over the grid's values) with early stopping, and stops as soon as one full-budget trial
is within ``--tolerance`` (1 mIoU point) of the grid's best. The figure of merit is trial-iterations (training
steps summed over all trials, early-stopped ones included) until that happens; target: at most 1/3 of the
grid's. Both runs use the same recipe, data, seed and trial function (npsemiseg.tune). Prints the ratio.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GRID = {
    "train.conf_threshold": [0.5, 0.7, 0.9],
    "train.lr": [0.003, 0.01, 0.03],
    "model.bank_capacity": [32, 512],
}
QUICK = {"train.conf_threshold": [0.5, 0.9], "train.lr": [0.003, 0.03]}


def space_yaml(grid: dict, iters: int, every: int, split: str) -> str:
    params = "".join(f"  {k}: {{type: categorical, choices: {json.dumps(v)}}}\n" for k, v in grid.items())
    return (f"recipe: {REPO / 'configs' / 'demo.yaml'}\nsplits: [{split}]\n"
            f"overrides: {{train.iters: {iters}, train.eval_every: {every}}}\nparams:\n{params}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--split", default="demo/1_8")
    ap.add_argument("--tolerance", type=float, default=0.01, help="mIoU within this of the grid's best")
    ap.add_argument("--max-concurrent", type=int, default=2)
    ap.add_argument("--out", default=None, help="storage folder (default: a temp folder)")
    ap.add_argument("--seeds", default="0", help="comma-separated TPE seeds; one TPE+ASHA run per seed")
    ap.add_argument("--reuse-grid", action="store_true", help="load the grid's results from --out instead of "
                                                              "rerunning it (the grid is deterministic)")
    args = ap.parse_args()

    from ray import tune

    from npsemiseg.tune.cli import ensure_demo_data
    from npsemiseg.tune.common import SPLIT_KEY, split_slug, trial_dirname
    from npsemiseg.tune.results import collect
    from npsemiseg.tune.session import connect
    from npsemiseg.tune.space import load_space
    from npsemiseg.tune.sweep import SweepSettings, make_scheduler, make_searcher, make_trainable

    grid = QUICK if args.quick else GRID
    n_grid = len(list(itertools.product(*grid.values())))
    out = Path(args.out or tempfile.mkdtemp(prefix="tpe_vs_grid_"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "space.yaml").write_text(space_yaml(grid, args.iters, args.eval_every, args.split))
    root = ensure_demo_data(REPO / "demo_data", "voc")
    connect(num_cpus=4, log_to_driver=False)

    def settings(name: str, **kw) -> SweepSettings:
        return SweepSettings(space=load_space(out / "space.yaml"), experiment=name, storage_root=str(out),
                             splits=[args.split],
                             overrides={"data.root": str(root.resolve())}, grace_period=args.eval_every,
                             max_concurrent=args.max_concurrent, verbose=0, **kw)

    # --- grid: every configuration, full budget (same trainable, no searcher, no scheduler)
    g = settings("grid", num_samples=1)
    t0 = time.time()
    grid_path = out / "grid" / split_slug(args.split)
    if args.reuse_grid and tune.Tuner.can_restore(str(grid_path)):
        grid_res = tune.Tuner.restore(str(grid_path), make_trainable(g)).get_results()
    else:
        grid_res = tune.Tuner(
            make_trainable(g),
            param_space={**{k: tune.grid_search(v) for k, v in grid.items()}, SPLIT_KEY: args.split},
            tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=args.max_concurrent,
                                        trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(name=split_slug(args.split), storage_path=str(out / "grid"), verbose=0),
        ).fit()
    grid_wall = time.time() - t0
    gdf, _, _ = collect(g, grid_res)
    full = gdf[gdf["full_budget"]]
    best = float(full["best_miou"].max())
    grid_iters = int(gdf["iterations"].sum())
    print(f"grid: {len(gdf)} trials ({n_grid} configs), best val/miou {best:.4f}, "
          f"{grid_iters} trial-iterations, {grid_wall:.0f} s", flush=True)

    # --- TPE + ASHA over the same values, stopped when a full-budget trial is within tolerance of the grid's best
    target = best - args.tolerance
    ratios = []
    class WithinTolerance(tune.Stopper):
        """Stops the whole TPE run once a full-budget trial reaches the target."""

        def __init__(self) -> None:
            self.hit = False

        def __call__(self, trial_id: str, result: dict) -> bool:
            if result.get("step", 0) >= args.iters and result.get("val/miou", -1) >= target:
                self.hit = True
            return False

        def stop_all(self) -> bool:
            return self.hit

    for seed in [int(x) for x in args.seeds.split(",")]:
        stopper = WithinTolerance()
        t = settings(f"tpe_s{seed}", num_samples=n_grid, n_startup_trials=max(2, n_grid // 6), reduction_factor=3,
                     seed=seed)
        t0 = time.time()
        tpe_res = tune.Tuner(
            make_trainable(t),
            tune_config=tune.TuneConfig(search_alg=make_searcher(t), scheduler=make_scheduler(t),
                                        num_samples=n_grid, max_concurrent_trials=args.max_concurrent,
                                        trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(name=split_slug(args.split), storage_path=str(out / f"tpe_s{seed}"),
                                      verbose=0, stop=stopper),
        ).fit()
        tpe_wall = time.time() - t0
        tdf, _, _ = collect(t, tpe_res)
        tpe_iters = int(tdf["iterations"].sum())
        full = tdf[tdf["full_budget"]]
        tbest = float(full["best_miou"].max()) if len(full) else float("nan")
        ratios.append(tpe_iters / grid_iters if stopper.hit else float("nan"))
        print(f"tpe+asha seed {seed}: {len(tdf)} trials ({len(tdf) - len(full)} stopped early), best full-budget "
              f"val/miou {tbest:.4f} (target {target:.4f}: {'reached' if stopper.hit else 'NOT reached'}), "
              f"{tpe_iters} trial-iterations, {tpe_wall:.0f} s; ratio to grid {ratios[-1]:.3f}", flush=True)
    done = [r for r in ratios if r == r]
    print(f"RATIO trial-iterations tpe+asha / grid over {len(ratios)} seed(s): "
          f"{', '.join(f'{r:.3f}' for r in ratios)}; mean {sum(done) / max(1, len(done)):.3f} over the "
          f"{len(done)} seed(s) that reached the target (target <= 0.333)")
    print(f"details: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
