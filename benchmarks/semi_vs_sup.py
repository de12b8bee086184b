"""NP-SemiSeg semi-supervised vs supervised-only (and intended vs released NP mode) on the synthetic demo data.

    python benchmarks/semi_vs_sup.py                      # 3 seeds x 3 variants, demo scale (~15 min, 2 cores)
    python benchmarks/semi_vs_sup.py --smoke-test         # 1 seed, a few steps, tiny data (seconds)

Every run uses the same labelled split (``data.split_seed`` fixed) and the same step budget; seeds change the
model initialisation and augmentation. Runs are interleaved (seed-major, variants side by side) over ``--jobs``
single-threaded processes, so machine load hits all variants alike. Printed: val mIoU and uncertainty metrics
(mean +- std over seeds, last evaluation at the end of the budget), the per-seed paired gain semi - sup, and
the step-time ratio. Results also go to ``<out>/results.json``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "semi": ("demo.yaml", {}),
    "supervised": ("demo_supervised.yaml", {}),
    "semi_released": ("demo.yaml", {"model.np_mode": "released"}),
}


def _run(job: dict) -> dict:
    """One training run in a fresh single-threaded process; returns its final metrics."""
    import torch

    torch.set_num_threads(1)
    from npsemiseg.config import load_config
    from npsemiseg.engine.context import LocalContext
    from npsemiseg.engine.loop import fit

    cfg = load_config(REPO / "configs" / job["recipe"], job["overrides"])
    t0 = time.perf_counter()
    metrics = fit(cfg, LocalContext(cfg.out_dir, "cpu", resume=False))
    metrics["wall_s"] = time.perf_counter() - t0
    return {**job, "metrics": {k: v for k, v in metrics.items() if "/iou/" not in k}}


def _mean_std(xs: list[float]) -> str:
    xs = [x for x in xs if x == x]
    if not xs:
        return "n/a"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.4f} +- {sd:.4f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=str(REPO / "demo_data"), help="make-demo-data output (made if absent)")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench_semi_vs_sup"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--iters", type=int, default=0, help="steps per run (0 = the recipes' train.iters)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel single-threaded runs")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--smoke-test", action="store_true", help="tiny data, 1 seed, 4 steps")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="extra config overrides for every run")
    args = ap.parse_args(argv)

    scale = "tiny" if args.smoke_test else "demo"
    root = Path(args.data_root) / scale if args.smoke_test else Path(args.data_root)
    if not (root / "voc").is_dir():
        from npsemiseg.data import make_demo_data

        print(f"generating {scale} demo data in {root} ...", flush=True)
        make_demo_data(root, scale=scale, seed=0)
    seeds = args.seeds[:1] if args.smoke_test else args.seeds
    jobs = []
    for seed in seeds:
        for name in args.variants:
            recipe, extra = VARIANTS[name]
            over = {"seed": seed, "data.root": str(root / "voc"), "out_dir": f"{args.out}/{name}_s{seed}",
                    "data.num_workers": 0, **extra}
            if args.iters or args.smoke_test:
                n = 4 if args.smoke_test else args.iters
                over.update({"train.iters": n, "train.eval_every": n})
            if args.smoke_test:
                over.update({"data.split": "demo/1_4", "data.crop_size": 64, "data.val_limit": 4})
            for item in args.overrides:
                k, v = item.split("=", 1)
                over[k] = v
            jobs.append({"variant": name, "seed": seed, "recipe": recipe, "overrides": over})
    print(f"{len(jobs)} runs ({len(seeds)} seeds x {len(args.variants)} variants), {args.jobs} at a time",
          flush=True)
    t0 = time.perf_counter()
    results = []
    with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
        for r in pool.imap(_run, jobs):
            m = r["metrics"]
            print(f"  {r['variant']:<14} seed {r['seed']}: val/miou {m['val/miou']:.4f}  "
                  f"err_auroc {m['val/err_auroc']:.4f}  step {m['train/step_time']:.3f}s  wall {m['wall_s']:.0f}s",
                  flush=True)
            results.append(r)
    total = time.perf_counter() - t0

    by = {v: [r for r in results if r["variant"] == v] for v in args.variants}
    print(f"\nsummary over seeds {seeds} (same labelled split; {total:.0f} s in all)")
    print(f"  {'variant':<14} {'val/miou':<18} {'val/err_auroc':<18} {'val/ece':<18} {'step s':<8}")
    for v, rs in by.items():
        def col(k: str, rs: list = rs) -> list[float]:
            return [r["metrics"][k] for r in rs]

        print(f"  {v:<14} {_mean_std(col('val/miou')):<18} {_mean_std(col('val/err_auroc')):<18} "
              f"{_mean_std(col('val/ece')):<18} {statistics.mean(col('train/step_time')):.3f}")
    summary: dict = {"seeds": seeds, "total_s": total, "runs": results}
    if "semi" in by and "supervised" in by:
        sup = {r["seed"]: r["metrics"] for r in by["supervised"]}
        gains = [r["metrics"]["val/miou"] - sup[r["seed"]]["val/miou"] for r in by["semi"] if r["seed"] in sup]
        ratio = statistics.mean(r["metrics"]["train/step_time"] for r in by["semi"]) / statistics.mean(
            m["train/step_time"] for m in sup.values())
        wins = sum(g > 0 for g in gains)
        print(f"  paired gain semi - supervised: {_mean_std(gains)} mIoU ({wins}/{len(gains)} seeds better); "
              f"semi step time / supervised = {ratio:.2f}x")
        summary.update({"gain_semi_minus_sup": gains, "step_time_ratio_semi_sup": ratio})
    if "semi" in by and "semi_released" in by:
        rel = {r["seed"]: r["metrics"] for r in by["semi_released"]}
        diffs = [r["metrics"]["val/miou"] - rel[r["seed"]]["val/miou"] for r in by["semi"] if r["seed"] in rel]
        print(f"  paired gain intended - released: {_mean_std(diffs)} mIoU")
        summary["gain_intended_minus_released"] = diffs
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
