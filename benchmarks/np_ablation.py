"""NP head ablation: plain head, fair MC dropout, NP with each decoder, NP released, trained with the one engine.

    python benchmarks/np_ablation.py                    # 3 seeds x variants x {demo, large} (~25 min of 1 core)
    python benchmarks/np_ablation.py --smoke-test       # tiny data, 1 seed, a few steps (about a minute)
    python benchmarks/np_ablation.py --settings demo --variants np_spec np_released np_spec_varkl

Every run is ``npsemiseg.engine.fit`` on ``configs/demo.yaml`` with the same split, step budget and seeds; only
the head changes. Settings: ``demo`` (crop 80, val images as they are: 28 x 32 feature maps) and ``large`` (images
scaled 1.25-1.75x for training, crop 128 = 32 x 32 training maps; val images scaled 1.5x: 42 x 48 maps), so the
border ring of the feature map does not dominate. The EMA teacher of the last step is then measured on the first
``--val`` val images with T = 20 samples (``np_measure.py`` in this folder), and for NP heads again with the trained
centres zeroed and shuffled. Printed: one table per setting (mean +- std over seeds) and the PAvPU curve; all
numbers go to ``<out>/results.json``.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS: dict[str, dict] = {
    "plain": {"model.head": "plain"},
    "mc_dropout": {"model.head": "mcdropout", "model.mc_dropout_scope": "head"},
    "np_spec": {"model.decoder": "spec"},
    "np_released": {"model.np_mode": "released"},  # decoder auto = spec
    "np_splitnorm": {"model.decoder": "splitnorm"},
    "np_film": {"model.decoder": "film"},
    "np_film_last": {"model.decoder": "film_last"},
    # anomaly diagnosis (benchmarks/np_anomaly.py): intended mode trained with the released variance-reading KL;
    # the spec decoder with z = d = 0 (no NP path at all); released with a random bank write of K rows per class
    "np_spec_varkl": {"model.decoder": "spec", "_patch": "kl_variance"},
    "np_spec_nolatent": {"model.decoder": "spec", "_patch": "no_latent"},
    "np_released_budget": {"model.np_mode": "released", "model.pixels_per_class": 100000},
}
DEFAULT_VARIANTS = ["plain", "mc_dropout", "np_spec", "np_released", "np_film", "np_film_last"]
SETTINGS: dict[str, dict] = {
    "demo": {"over": {}, "eval_scale": 1.0},
    "large": {"over": {"data.crop_size": 128, "data.scale_min": 1.25, "data.scale_max": 1.75,
                       "data.batch_size_l": 2, "data.batch_size_u": 2}, "eval_scale": 1.5},
}


def _kl_normal():
    from npsemiseg.models.np_head import kl_normal

    return kl_normal


_KL = _DECODE = None


def _patch(kind: str) -> None:
    """Diagnostic training switches that have no config key (applied in the run's own process)."""
    import torch

    if kind == "kl_variance":
        import npsemiseg.models.np_head as nph

        nph.kl_normal = lambda mq, sq, mp_, sp, variance=False: _KL(mq, sq, mp_, sp, variance=True)


    if kind == "no_latent":
        import npsemiseg.models.np_head as nph

        nph.NPHead.decode = lambda self, f, z, d: self.decoder(f, torch.zeros_like(z), torch.zeros_like(d))


def _unpatch() -> None:
    import npsemiseg.models.np_head as nph

    nph.kl_normal = _KL
    nph.NPHead.decode = _DECODE


def _run(job: dict) -> dict:
    """Train one variant in a fresh single-threaded process, then measure its teacher."""
    import torch

    torch.set_num_threads(1)
    from np_measure import measure_model

    from npsemiseg.config import load_config
    from npsemiseg.data import build_datasets
    from npsemiseg.engine.checkpoint import load_checkpoint
    from npsemiseg.engine.context import LocalContext
    from npsemiseg.engine.loop import fit
    from npsemiseg.models import build_model

    global _KL, _DECODE
    _KL = _KL or _kl_normal()
    if _DECODE is None:
        from npsemiseg.models.np_head import NPHead

        _DECODE = NPHead.decode
    _unpatch()  # worker processes are reused: undo a previous run's patch
    over = dict(job["overrides"])
    if "_patch" in over:
        _patch(over.pop("_patch"))
    cfg = load_config(REPO / "configs" / "demo.yaml", over)
    t0 = time.perf_counter()
    fit(cfg, LocalContext(cfg.out_dir, "cpu", resume=False))
    train_s = time.perf_counter() - t0
    ckpt = load_checkpoint(Path(cfg.out_dir) / "checkpoints" / "last.pt")
    n_cls = int(ckpt["num_classes"])
    model = build_model(cfg.model, n_cls)
    model.load_state_dict(ckpt["teacher"])
    plain_cfg = load_config(REPO / "configs" / "demo.yaml", {**over, "model.head": "plain"})
    plain = build_model(plain_cfg.model, n_cls)  # untrained: only its inference time is used
    val = build_datasets(cfg).val
    res = measure_model(model, val, n_cls, job["n_val"], job["eval_scale"], job["t_eval"], cfg.seed, plain)
    return {**{k: v for k, v in job.items() if k != "overrides"}, "train_s": train_s, **res}


def _fmt(xs: list[float], digits: int = 4) -> str:
    xs = [x for x in xs if x == x]
    if not xs:
        return "n/a"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.{digits}f} +- {sd:.{digits}f}"


COLUMNS = [("miou", "val mIoU"), ("ece", "ECE"), ("err_auroc", "error AUROC"), ("pavpu", "PAvPU@0.5lnC"),
           ("acc_interior", "acc interior"), ("acc_border", "acc border"),
           ("mi_share", "interior MI share"), ("mi_share_err", "interior MI share (errors)"),
           ("zero_dmiou", "dmIoU zero ctx"), ("zero_changed", "changed zero ctx"),
           ("shuffle_dmiou", "dmIoU shuffled ctx"), ("shuffle_changed", "changed shuffled ctx"),
           ("time_rel", "T=20 time / plain")]


def print_tables(results: list[dict]) -> None:
    for setting in dict.fromkeys(r["setting"] for r in results):
        rows = [r for r in results if r["setting"] == setting]
        fmap = rows[0]["feature_map"]
        print(f"\n## setting {setting}: val feature maps {fmap[0]} x {fmap[1]}, "
              f"{rows[0]['n_val']} val images, T = {rows[0]['t_eval']}, seeds {sorted({r['seed'] for r in rows})}")
        print("| variant | " + " | ".join(name for _, name in COLUMNS) + " |")
        print("|---" * (len(COLUMNS) + 1) + "|")
        for v in dict.fromkeys(r["variant"] for r in rows):
            vr = [r for r in rows if r["variant"] == v]
            cells = [_fmt([r.get(k, float("nan")) for r in vr], 2 if k == "time_rel" else 4) for k, _ in COLUMNS]
            print(f"| {v} | " + " | ".join(cells) + " |")
        for v in dict.fromkeys(r["variant"] for r in rows if "banks_on_miou" in r):
            vr = [r for r in rows if r["variant"] == v and "banks_on_miou" in r]
            change = _fmt([r["banks_on_miou"] - r["miou"] for r in vr])
            print(f"{v} evaluated with its trained centres instead of zeros: mIoU "
                  f"{_fmt([r['banks_on_miou'] for r in vr])} (change {change})")
        for v in dict.fromkeys(r["variant"] for r in rows if "time_rel_full" in r):
            vr = [r for r in rows if r["variant"] == v and "time_rel_full" in r]
            full = _fmt([r["time_rel_full"] for r in vr], 2)
            print(f"{v} with the whole network rerun T times: T=20 time / plain {full}")
        thr = rows[0]["pavpu_thresholds"]
        print(f"\nPAvPU curve (uncertainty threshold as a fraction of ln C = {rows[0]['ln_c']:.3f}; 4x4 patches, "
              "accurate = >= 50% correct):")
        print("| variant | " + " | ".join(f"{t:g}" for t in thr) + " |")
        print("|---" * (len(thr) + 1) + "|")
        for v in dict.fromkeys(r["variant"] for r in rows):
            vr = [r for r in rows if r["variant"] == v]
            cells = [_fmt([r["pavpu_curve"][i] for r in vr], 3) for i in range(len(thr))]
            print(f"| {v} | " + " | ".join(cells) + " |")


def _load_runs(folder: Path) -> list[dict]:
    """Runs of one output folder: runs.jsonl (written as runs finish), else results.json."""
    if (folder / "runs.jsonl").is_file():
        return [json.loads(line) for line in (folder / "runs.jsonl").read_text().splitlines() if line.strip()]
    return json.loads((folder / "results.json").read_text())


def print_paired(results: list[dict], ref: str) -> None:
    """Per setting, each variant's val mIoU minus ``ref``'s on the same seed: mean +- std over shared seeds."""
    for setting in dict.fromkeys(r["setting"] for r in results):
        base = {r["seed"]: r["miou"] for r in results if r["setting"] == setting and r["variant"] == ref}
        if not base:
            continue
        print(f"\npaired val mIoU difference vs {ref}, setting {setting}:")
        for v in dict.fromkeys(r["variant"] for r in results if r["setting"] == setting):
            diffs = {r["seed"]: r["miou"] - base[r["seed"]] for r in results
                     if r["setting"] == setting and r["variant"] == v and r["seed"] in base}
            if v != ref and diffs:
                per = ", ".join(f"s{k} {d:+.4f}" for k, d in sorted(diffs.items()))
                print(f"  {v:20s} {_fmt(list(diffs.values()))}  ({per})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=str(REPO / "demo_data"), help="make-demo-data output (made if absent)")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench_np_ablation"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    ap.add_argument("--iters", type=int, nargs=2, default=[100, 60], metavar=("DEMO", "LARGE"),
                    help="training steps per run in the demo and large settings")
    ap.add_argument("--val", type=int, default=24, help="val images measured")
    ap.add_argument("--t-eval", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=2, help="parallel single-threaded runs")
    ap.add_argument("--smoke-test", action="store_true", help="tiny data, 1 seed, 3 steps, 4 val images")
    ap.add_argument("--report", action="store_true", help="only print the tables of <out>/runs.jsonl")
    ap.add_argument("--also", nargs="*", default=[], help="--report: more output folders whose runs to include")
    ap.add_argument("--paired-with", default="np_spec", help="--report: variant for per-seed paired mIoU differences")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.report:
        results = [r for d in [out, *map(Path, args.also)] for r in _load_runs(d)]
        results.sort(key=lambda r: (r["setting"], list(VARIANTS).index(r["variant"]), r["seed"]))
        print_tables(results)
        print_paired(results, args.paired_with)
        return 0

    scale = "tiny" if args.smoke_test else "demo"
    root = Path(args.data_root) / scale if args.smoke_test else Path(args.data_root)
    if not (root / "voc").is_dir():
        from npsemiseg.data import make_demo_data

        print(f"generating {scale} demo data in {root} ...", flush=True)
        make_demo_data(root, scale=scale, seed=0)
    seeds = args.seeds[:1] if args.smoke_test else args.seeds
    n_val = 4 if args.smoke_test else args.val
    jobs = []
    for setting in args.settings:
        iters = 3 if args.smoke_test else args.iters[list(SETTINGS).index(setting)]
        for seed in seeds:
            for name in args.variants:
                over = {"seed": seed, "data.root": str(root / "voc"), "out_dir": f"{args.out}/{setting}/{name}_s{seed}",
                        "data.num_workers": 0, "train.iters": iters, "train.eval_every": iters,
                        "data.val_limit": 4, "train.log_every": 1000, **SETTINGS[setting]["over"], **VARIANTS[name]}
                jobs.append({"setting": setting, "variant": name, "seed": seed, "overrides": over, "n_val": n_val,
                             "eval_scale": SETTINGS[setting]["eval_scale"], "t_eval": args.t_eval, "iters": iters})
    print(f"{len(jobs)} runs ({len(args.settings)} settings x {len(seeds)} seeds x {len(args.variants)} variants), "
          f"{args.jobs} at a time", flush=True)
    t0 = time.perf_counter()
    results = []
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs.jsonl").write_text("")
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        for res in pool.imap_unordered(_run, jobs):
            results.append(res)
            with open(out / "runs.jsonl", "a") as f:  # each run as it finishes (--report prints them)
                f.write(json.dumps(res) + "\n")
            print(f"  [{time.perf_counter() - t0:6.0f}s] {res['setting']:5s} {res['variant']:14s} s{res['seed']} "
                  f"mIoU {res['miou']:.4f} train {res['train_s']:.0f}s", flush=True)
    results.sort(key=lambda r: (r["setting"], args.variants.index(r["variant"]), r["seed"]))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print_tables(results)
    print(f"\ntotal {time.perf_counter() - t0:.0f}s; results in {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
