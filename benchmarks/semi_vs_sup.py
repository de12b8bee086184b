"""NP-SemiSeg semi-supervised vs supervised-only on the synthetic demo data: equal steps and equal compute.

    python benchmarks/semi_vs_sup.py --steps 600 --seeds 0 1 2 --splits demo/1_16 demo/1_8 --equal-compute
    python benchmarks/semi_vs_sup.py --data-root demo_data_alt ...   # a tree the recipe was not tuned on
    python benchmarks/semi_vs_sup.py --variant ramp:train.unsup_ramp=200,train.conf_threshold=0.8 ...
    python benchmarks/semi_vs_sup.py --trace --eval-every 100 ...    # pseudo-label and teacher/student traces
    python benchmarks/semi_vs_sup.py --smoke-test                    # 1 seed, a few steps, tiny data (seconds)
    ... --reuse                          # reuse stored runs with identical configs (add variants incrementally)

Every run of a split uses the same labelled split (``data.split_seed`` fixed); seeds change the initialisation
and augmentation. Runs are interleaved (split- and seed-major, variants side by side) over ``--jobs``
single-threaded processes, so machine load hits all variants alike. ``--equal-compute`` adds, per split and seed,
an equal-compute run: the ratio r = CPU time per step of ``--eqc-ref`` / supervised is measured (process time,
interleaved repeats, so other jobs' load does not bias it; or given by ``--eqc-ratio``), then either supervised
runs ``steps x r`` steps (``--eqc-mode long_sup``) or the semi variant runs ``steps / r`` (``short_semi``).
Printed: last-evaluation val mIoU (mean +- std over seeds) per split and variant, the per-seed paired gains
against ``supervised`` (and ``supervised_eqc``) with the number of seeds better by >= 1 point, and the
step-time ratio. ``--trace`` also prints, per variant and evaluation step, the teacher and student mIoU and the
pseudo-label coverage / accuracy means (``train.eval_both``, ``train.pl_gt_metrics``). All to ``<out>/results.json``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "semi": ("demo.yaml", {}),
    "supervised": ("demo_supervised.yaml", {}),
    "semi_released": ("demo.yaml", {"model.np_mode": "released"}),
}
TRACE_KEYS = ("val/teacher_miou", "val/student_miou", "train/pl_coverage", "train/pl_accuracy",
              "train/pl_coverage_cls", "train/pl_correct_cls", "train/teacher_acc_u", "train/unsup_weight",
              "train/loss_unsup")


def _run(job: dict) -> dict:
    """One training run in a fresh single-threaded process; returns its final metrics and report history."""
    import torch

    torch.set_num_threads(1)
    from npsemiseg.config import load_config
    from npsemiseg.engine.context import LocalContext
    from npsemiseg.engine.loop import fit

    history: list[dict] = []

    class Recorder(LocalContext):
        """Keeps every report in memory and writes no checkpoints (they would only cost time here)."""

        def report(self, metrics: dict[str, Any], checkpoint: dict[str, Any] | None = None) -> None:
            history.append({k: v for k, v in metrics.items() if "/iou/" not in k})

    cfg = load_config(REPO / "configs" / job["recipe"], job["overrides"])
    cache = Path(cfg.out_dir) / "bench_result.json"
    if job.get("reuse") and cache.is_file():
        done = json.loads(cache.read_text())
        if done["recipe"] == job["recipe"] and done["overrides"] == job["overrides"]:
            return {**done, "reused": True}
    t0 = time.perf_counter()
    metrics = fit(cfg, Recorder(cfg.out_dir, "cpu", resume=False))
    metrics["wall_s"] = time.perf_counter() - t0
    out = {**job, "metrics": {k: v for k, v in metrics.items() if "/iou/" not in k}, "history": history}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({k: v for k, v in out.items() if k != "reuse"}, default=float))
    return out


def _cpu_per_step(job: dict) -> float:
    """CPU seconds per training step of ``job``'s recipe: (process time of 40 steps - of 10 steps) / 30, so
    data set-up, model building and the (1-image) evaluation cancel out. Robust to other jobs' load."""
    import torch

    torch.set_num_threads(1)
    from npsemiseg.config import load_config
    from npsemiseg.engine.context import LocalContext
    from npsemiseg.engine.loop import fit

    times = []
    for n in (2, 10, 40):  # the 2-step run only warms up (lazy imports, allocator)
        over = {**job["overrides"], "train.iters": n, "train.eval_every": n, "data.val_limit": 1,
                "train.eval_both": False, "out_dir": job["overrides"]["out_dir"] + f"_timing{n}"}
        cfg = load_config(REPO / "configs" / job["recipe"], over)
        t0 = time.process_time()
        fit(cfg, LocalContext(cfg.out_dir, "cpu", resume=False))
        times.append(time.process_time() - t0)
    return (times[2] - times[1]) / 30


def _measure_ratio(pair: list[dict], n_jobs: int, repeats: int = 2) -> float:
    """Median over interleaved repeats of CPU time per step, first job / second job."""
    with mp.get_context("spawn").Pool(min(n_jobs, 2), maxtasksperchild=1) as pool:
        per = pool.map(_cpu_per_step, pair * repeats)
    a, b = statistics.median(per[0::2]), statistics.median(per[1::2])
    print(f"CPU time per step: {pair[0]['variant']} {a:.3f}s, {pair[1]['variant']} {b:.3f}s", flush=True)
    return a / b


def _mean_std(xs: list[float], fmt: str = ".4f") -> str:
    xs = [x for x in xs if x == x]
    if not xs:
        return "n/a"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):{fmt}} +- {sd:{fmt}}"


def parse_variant(text: str) -> tuple[str, tuple[str, dict[str, Any]]]:
    """``name:key=v,key=v`` -> (name, ("demo.yaml", overrides)); ``name:supervised:key=v`` uses the baseline."""
    name, _, rest = text.partition(":")
    recipe = "demo.yaml"
    if rest.startswith("supervised"):
        recipe, rest = "demo_supervised.yaml", rest[len("supervised"):].lstrip(":")
    over = {}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        over[k] = v
    return name, (recipe, over)


def _pool_map(jobs: list[dict], n: int, label: str) -> list[dict]:
    print(f"{len(jobs)} {label} runs, {n} at a time", flush=True)
    out = []
    with mp.get_context("spawn").Pool(n, maxtasksperchild=1) as pool:
        for r in pool.imap(_run, jobs):
            m = r["metrics"]
            print(f"  {r['split']:<10} {r['variant']:<16} seed {r['seed']}: {m['step']:>5} steps  val/miou "
                  f"{m['val/miou']:.4f}  step {m['train/step_time']:.3f}s  wall {m['wall_s']:.0f}s"
                  + ("  (stored result)" if r.get("reused") else ""), flush=True)
            out.append(r)
    return out


def _print_trace(results: list[dict], split: str, variant: str) -> None:
    rs = [r for r in results if r["split"] == split and r["variant"] == variant]
    steps = sorted({h["step"] for r in rs for h in r["history"] if "val/miou" in h})
    print(f"  trace {split} {variant} (mean over seeds): step " + "  ".join(k.split("/")[1] for k in TRACE_KEYS))
    for s in steps:
        row = []
        for k in TRACE_KEYS:
            xs = [h[k] for r in rs for h in r["history"] if h["step"] == s and k in h and h[k] == h[k]]
            row.append(f"{statistics.mean(xs):.3f}" if xs else "  -  ")
        print(f"    {s:>5}  " + "  ".join(row), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=str(REPO / "demo_data"), help="make-demo-data output (made if absent)")
    ap.add_argument("--data-seed", type=int, default=0, help="seed for make-demo-data when the root is absent")
    ap.add_argument("--data-variant", default="base", help="make-demo-data --variant when the root is absent")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench_semi_vs_sup"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", "--iters", type=int, default=0, help="steps per run (0 = the recipes' train.iters)")
    ap.add_argument("--splits", nargs="+", default=["demo/1_16"], help="label splits (data.split)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel single-threaded runs")
    ap.add_argument("--variants", nargs="*", default=["semi", "supervised"], help=f"of {list(VARIANTS)} + --variant")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:[supervised:]k=v,...",
                    help="define a variant on demo.yaml (or the supervised recipe) with overrides; it is run")
    ap.add_argument("--equal-compute", action="store_true",
                    help="add an equal-compute run per split and seed (see --eqc-mode)")
    ap.add_argument("--eqc-ref", default="semi", help="semi variant whose step time sets the equal-compute budget")
    ap.add_argument("--eqc-ratio", type=float, default=0.0,
                    help="semi / supervised compute per step (0 = measure CPU time per step, interleaved)")
    ap.add_argument("--eqc-mode", choices=("long_sup", "short_semi"), default="long_sup",
                    help="long_sup: supervised for steps x ratio; short_semi: the semi variant for steps / ratio")
    ap.add_argument("--eqc-only", action="store_true", help="run only the equal-compute runs (with --eqc-ratio)")
    ap.add_argument("--eqc-splits", nargs="*", default=None, help="splits to run equal-compute on (default all)")
    ap.add_argument("--trace", action="store_true", help="log teacher/student mIoU and pseudo-label metrics")
    ap.add_argument("--eval-every", type=int, default=0, help="evaluation interval (0 = only at the end)")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse a run's stored result (<out>/.../bench_result.json) when its config is identical")
    ap.add_argument("--smoke-test", action="store_true", help="tiny data, 1 seed, 4 steps")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="extra config overrides for every run")
    args = ap.parse_args(argv)

    variants = dict(VARIANTS)
    names = list(args.variants)
    for text in args.variant:
        name, spec = parse_variant(text)
        variants[name] = spec
        names.append(name) if name not in names else None
    unknown = [n for n in names if n not in variants]
    if unknown:
        ap.error(f"--variants: unknown {unknown}")
    scale = "tiny" if args.smoke_test else "demo"
    root = Path(args.data_root) / scale if args.smoke_test else Path(args.data_root)
    if not (root / "voc").is_dir():
        from npsemiseg.data import make_demo_data

        print(f"generating {scale} demo data ({args.data_variant}, seed {args.data_seed}) in {root} ...", flush=True)
        make_demo_data(root, scale=scale, seed=args.data_seed, variant=args.data_variant)
    seeds = args.seeds[:1] if args.smoke_test else args.seeds
    splits = ["demo/1_4"] if args.smoke_test else args.splits
    steps = 4 if args.smoke_test else args.steps

    def job(split: str, seed: int, name: str, recipe: str, extra: dict, n_steps: int) -> dict:
        tag = split.replace("/", "_")
        over: dict[str, Any] = {"seed": seed, "data.root": str(root / "voc"), "data.split": split,
                                "out_dir": f"{args.out}/{tag}/{name}_s{seed}", "data.num_workers": 0, **extra}
        if n_steps:
            over.update({"train.iters": n_steps, "train.eval_every": args.eval_every or n_steps})
        elif args.eval_every:
            over["train.eval_every"] = args.eval_every
        if args.trace:
            over.update({"train.eval_both": True, "train.pl_gt_metrics": True})
        if args.smoke_test:
            over.update({"data.crop_size": 64, "data.val_limit": 4})
        for item in args.overrides:
            k, v = item.split("=", 1)
            over[k] = v
        return {"split": split, "variant": name, "seed": seed, "recipe": recipe, "overrides": over,
                "reuse": args.reuse}

    jobs = [job(sp, s, n, *variants[n], steps) for sp in splits for s in seeds for n in names]
    t0 = time.perf_counter()
    results = [] if args.eqc_only else _pool_map(jobs, args.jobs, "equal-steps")
    if args.equal_compute:
        ref, eqc_splits = args.eqc_ref, splits if args.eqc_splits is None else args.eqc_splits
        ratio = args.eqc_ratio or _measure_ratio([job(eqc_splits[0], seeds[0], n, *variants[n], 0)
                                                  for n in (ref, "supervised")], args.jobs)
        long_sup = args.eqc_mode == "long_sup"
        n_eqc = max(round(steps * ratio if long_sup else steps / ratio), 1)
        name = "supervised_eqc" if long_sup else f"{ref}_eqc"
        print(f"equal compute: {ref} / supervised CPU time per step = {ratio:.2f}x -> {name} runs {n_eqc} steps",
              flush=True)
        base = variants["supervised" if long_sup else ref]
        eqc = [job(sp, s, name, *base, n_eqc) for sp in eqc_splits for s in seeds]
        results += _pool_map(eqc, args.jobs, "equal-compute")
        names.append(name)
        summary_ratio: float | None = ratio
    else:
        summary_ratio = None
    total = time.perf_counter() - t0

    summary: dict[str, Any] = {"seeds": seeds, "splits": splits, "steps": steps, "total_s": total,
                               "eqc_cpu_ratio": summary_ratio,
                               "variants": {n: variants.get(n) for n in names}, "runs": results, "gains": {}}
    print(f"\nsummary over seeds {seeds} ({total:.0f} s in all; last evaluation, teacher)")
    for sp in splits:
        by = {v: {r["seed"]: r["metrics"] for r in results if r["split"] == sp and r["variant"] == v} for v in names}
        print(f"  split {sp}")
        for v, ms in by.items():
            if not ms:
                continue
            print(f"    {v:<16} val/miou {_mean_std([m['val/miou'] for m in ms.values()])}  steps "
                  f"{statistics.mean(m['step'] for m in ms.values()):.0f}  step "
                  f"{statistics.mean(m['train/step_time'] for m in ms.values()):.3f}s  ece "
                  f"{_mean_std([m.get('val/ece', float('nan')) for m in ms.values()])}")
        for base in ("supervised", "supervised_eqc"):
            if base not in by:
                continue
            for v in names:
                if v.startswith("supervised"):
                    continue
                gains = [by[v][s]["val/miou"] - by[base][s]["val/miou"] for s in seeds if s in by[v] and s in by[base]]
                if not gains:
                    continue
                wins = sum(g >= 0.01 for g in gains)
                per = ", ".join(f"{g * 100:+.1f}" for g in gains)
                print(f"    gain {v} - {base}: {_mean_std([g * 100 for g in gains], '.2f')} points "
                      f"(per seed {per}; {wins}/{len(gains)} seeds >= +1 point)")
                summary["gains"][f"{sp}|{v}-{base}"] = gains
        for v in names:
            if v.startswith("supervised") or not by[v] or not by.get("supervised"):
                continue
            ratio = statistics.mean(m["train/step_time"] for m in by[v].values()) / statistics.mean(
                m["train/step_time"] for m in by["supervised"].values())
            print(f"    {v} step time / supervised = {ratio:.2f}x")
        if args.trace:
            for v in names:
                _print_trace(results, sp, v)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
