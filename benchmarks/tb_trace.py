"""Print the semi-supervised diagnostics of finished runs from their TensorBoard logs (``<out_dir>/tb``).

    python benchmarks/tb_trace.py runs/bench_semi_vs_sup/demo_1_16/semi_s0 runs/.../supervised_s0

One row per evaluation step: teacher and student val mIoU (``train.eval_both``) and the means, over the
training steps since the previous evaluation, of the pseudo-label coverage / accuracy metrics
(``train.pl_gt_metrics``), the unsupervised loss and its effective weight.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

COLUMNS = ("val/teacher_miou", "val/student_miou", "train/pl_coverage", "train/pl_accuracy",
           "train/pl_coverage_cls", "train/pl_correct_cls", "train/teacher_acc_u", "train/loss_sup",
           "train/loss_unsup", "train/unsup_weight")


def read_scalars(run: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} from every event file under ``run/tb``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for f in sorted((run / "tb").glob("events.*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return out


def trace_rows(scalars: dict[str, dict[int, float]]) -> list[tuple[int, dict[str, float]]]:
    """(eval step, {column: value}) with train/* averaged over (previous eval step, eval step]."""
    evals = sorted(scalars.get("val/miou", {}))
    rows, prev = [], 0
    for s in evals:
        row = {}
        for col in COLUMNS:
            series = scalars.get(col, {})
            if col.startswith("val/"):
                if s in series:
                    row[col] = series[s]
            else:
                xs = [v for k, v in series.items() if prev < k <= s and v == v]
                if xs:
                    row[col] = statistics.mean(xs)
        if "val/teacher_miou" not in row and s in scalars.get("val/miou", {}):
            row["val/miou"] = scalars["val/miou"][s]
        rows.append((s, row))
        prev = s
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run out_dirs (holding tb/)")
    args = ap.parse_args(argv)
    for run in map(Path, args.runs):
        if not (run / "tb").is_dir():
            print(f"{run}: no tb/ folder", file=sys.stderr)
            return 2
        print(f"{run}")
        print("  step " + " ".join(f"{c.split('/')[1]:>14}" for c in COLUMNS))
        for s, row in trace_rows(read_scalars(run)):
            print(f"  {s:>4} " + " ".join(f"{row[c]:>14.3f}" if c in row else f"{'-':>14}" for c in COLUMNS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
