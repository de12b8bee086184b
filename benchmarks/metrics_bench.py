"""Streaming metrics: cost per evaluation batch and accuracy of the binned error AUROC.

    python benchmarks/metrics_bench.py [--size 256] [--classes 21] [--batch 4] [--repeats 7]

Prints, measured side by side with interleaved repeats (medians):
- ConfusionMatrix.update vs torchmetrics MulticlassJaccardIndex.update on the same batch (same counts);
- UncertaintyMeter.update (ECE + PAvPU + AUROC histograms) relative to ConfusionMatrix.update;
- |binned - exact| error AUROC for 256 / 2048 (default) / 8192 bins on softmax outputs of varying sharpness.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from npsemiseg.metrics import ConfusionMatrix, UncertaintyMeter, entropy, error_auroc


def _batch(b: int, c: int, s: int, sharp: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, c, (b, s, s), generator=g)
    logits = torch.randn(b, c, s, s, generator=g) * sharp
    logits.scatter_add_(1, target[:, None], torch.full((b, 1, s, s), 2.0))
    target[:, :4] = 255
    return logits.softmax(1), target


def _time(fn, n: int = 3) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    from torchmetrics.classification import MulticlassJaccardIndex

    c = args.classes
    probs, target = _batch(args.batch, c, args.size, 3.0, 0)
    pred = probs.argmax(1)
    cm, um = ConfusionMatrix(c), UncertaintyMeter(c)
    tm = MulticlassJaccardIndex(num_classes=c, ignore_index=255, average="macro")
    runs = {"ours_cm": [], "torchmetrics": [], "uncertainty": []}
    for _ in range(args.repeats):  # interleaved so machine noise hits all three alike
        runs["ours_cm"].append(_time(lambda: cm.update(pred, target)))
        runs["torchmetrics"].append(_time(lambda: tm.update(pred, target)))
        runs["uncertainty"].append(_time(lambda: um.update(probs, target)))
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"batch {args.batch} x {c} classes x {args.size}^2 px, torch threads {torch.get_num_threads()}, "
          f"{args.repeats} interleaved repeats (medians)")
    print(f"  ConfusionMatrix.update      {med['ours_cm'] * 1e3:8.2f} ms")
    print(f"  torchmetrics Jaccard.update {med['torchmetrics'] * 1e3:8.2f} ms  "
          f"(ours / torchmetrics = {med['ours_cm'] / med['torchmetrics']:.2f}x)")
    print(f"  UncertaintyMeter.update     {med['uncertainty'] * 1e3:8.2f} ms  "
          f"({med['uncertainty'] / med['ours_cm']:.1f}x the confusion matrix)")
    print(f"  mIoU ours {cm.compute()['miou']:.6f} vs torchmetrics {float(tm.compute()):.6f}")

    print("binned error AUROC vs exact (rank-based) AUROC:")
    for sharp in (1.0, 3.0, 6.0, 12.0):
        p, t = _batch(2, c, 128, sharp, 1)
        valid = t != 255
        exact = error_auroc(entropy(p)[valid], (p.argmax(1) != t)[valid])
        errs = []
        for bins in (256, 2048, 8192):
            m = UncertaintyMeter(c, auroc_bins=bins)
            m.update(p, t)
            errs.append(abs(m.compute()["err_auroc"] - exact))
        print(f"  logit scale {sharp:4.1f}: exact {exact:.4f}; |error| 256 bins {errs[0]:.1e}, "
              f"2048 {errs[1]:.1e}, 8192 {errs[2]:.1e}")


if __name__ == "__main__":
    main()
