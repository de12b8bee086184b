"""Slot utilisation of a sweep whose splits share one pool of trial slots (demo data, CPU).

    python benchmarks/slot_utilisation.py                  # 3 splits x 4 trials on 4 slots (goal >= 90 %)
    python benchmarks/slot_utilisation.py --iters 20       # smaller still

Runs the real sweep machinery (one Tuner, SplitSearcher, per-split successive halving, Ray Train trials) on the
synthetic demo data with a short budget, then prints what the sweep stored in its results metadata:
slot utilisation = busy trial-slot time / (slots x makespan), where a trial's slot time runs from Tune starting it
to its end (``trial_events.jsonl``), and makespan from the first trial start to the last trial end. It also prints
the share of slot time spent training (the rest is Ray Train worker start-up and teardown). Needs the machine to
itself: run it under the project's Ray lock.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPACE = """recipe: {recipe}
splits: [{splits}]
overrides: {{train.iters: {iters}, train.eval_every: {every}, data.val_limit: {val}}}
params:
  train.conf_threshold: {{type: float, low: 0.5, high: 0.95}}
  train.lr: {{type: logfloat, low: 0.003, high: 0.05}}
  model.latent_dim: {{type: categorical, choices: [8, 16, 32]}}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", default="demo/1_16,demo/1_8,demo/1_4")
    ap.add_argument("--trials", type=int, default=4, help="trials per split")
    ap.add_argument("--slots", type=int, default=4, help="--max-concurrent (all splits together)")
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--val-limit", type=int, default=20)
    ap.add_argument("--num-cpus", type=int, default=8, help="logical CPUs of the local Ray instance")
    ap.add_argument("--out", default=None, help="storage folder (default: a temp folder)")
    args = ap.parse_args()

    import pyarrow.parquet as pq

    from npsemiseg.tune.cli import ensure_demo_data
    from npsemiseg.tune.session import connect
    from npsemiseg.tune.space import load_space
    from npsemiseg.tune.sweep import SweepSettings, run_sweep

    out = Path(args.out or tempfile.mkdtemp(prefix="slot_util_"))
    out.mkdir(parents=True, exist_ok=True)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    (out / "space.yaml").write_text(SPACE.format(recipe=REPO / "configs" / "demo.yaml", splits=", ".join(splits),
                                                 iters=args.iters, every=args.eval_every, val=args.val_limit))
    root = ensure_demo_data(REPO / "demo_data", "voc")
    connect(num_cpus=args.num_cpus, log_to_driver=False)
    settings = SweepSettings(space=load_space(out / "space.yaml"), experiment="slots", storage_root=str(out),
                             overrides={"data.root": str(root.resolve())}, num_samples=args.trials,
                             max_concurrent=args.slots, n_startup_trials=2, verbose=0)
    t0 = time.time()
    df = run_sweep(settings, export=False)
    wall = time.time() - t0
    meta = json.loads(pq.read_schema(settings.experiment_dir / "results.parquet").metadata[b"npsemiseg"])
    u = meta["slot_utilisation"]
    train = float(df["train_time_s"].sum())
    print(f"UTILISATION {len(splits)} splits x {args.trials} trials on {u['slots']} slots ({args.iters} steps, "
          f"{int((~df['full_budget']).sum())} stopped early): {100 * u['utilisation']:.1f} % "
          f"(busy {u['busy_s']:.0f} s / ({u['slots']} x makespan {u['makespan_s']:.0f} s)); training "
          f"{100 * train / max(u['busy_s'], 1e-9):.0f} % of slot time; sweep wall {wall:.0f} s (goal >= 90 %)")
    # Where the idle slot time went: the tail (slots with no trial left to start after the last start) and the
    # hand-overs (a slot between one trial's end and the next trial's start: Tune starting a new trial actor).
    from npsemiseg.tune.timing import read_events, trial_times

    times = [t for t in trial_times(read_events(settings.events_path)).values() if t.first_start is not None]
    last_start, end = max(t.first_start for t in times), max(t.last_end for t in times)
    idle = u["slots"] * u["makespan_s"] - u["busy_s"]
    tail = sum(end - max(t.last_end, last_start) for t in sorted(times, key=lambda t: t.last_end)[-u["slots"]:])
    gaps = len(times) - u["slots"]
    print(f"IDLE {idle:.0f} slot-s: tail {tail:.0f} s, hand-overs {idle - tail:.0f} s over {gaps} trial starts "
          f"(mean {(idle - tail) / max(gaps, 1):.1f} s between a trial's end and the next start)")
    print(f"details: {settings.experiment_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
