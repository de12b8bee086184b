"""P4: memory-bank update, vectorised (select_rows + update_banks) vs a per-class Python loop.

    .venv/bin/python benchmarks/bank_update.py          # 21 classes, crop 480 -> 120x120 labels, batch 4, L=32
    .venv/bin/python benchmarks/bank_update.py --smoke-test

Both paths write the same rows and end with identical banks (checked): the vectorised path draws the step's rows
(``select_rows``: one row per labelled pixel of the stride-4 query, at most the budget K per class, at random),
writes the labelled images' rows into the context bank and its draw over all images into the target bank (FIFO,
K rows per class), recomputes the centres; the loop is the straightforward per-class version (mask, select,
ring write, mean) of the same write. A third line times the released pipeline's extra cost, upsampling the
query to the full crop before the per-class loop. Last, where the stored rows come from on two one-class maps
(mean row index, (h - 1) / 2 if unbiased) for the default random write and a raster-order FIFO of every row.
Interleaved repeats, medians of process CPU time (robust on a shared machine;
run with --threads 1 for that).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from npsemiseg.models import NPHead

IGNORE = 255


def loop_select(query: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    """Per class c: rows (n_c x L) of the pixels labelled c, in (batch, y, x) order."""
    feats = query.permute(0, 2, 3, 1)
    return [feats[labels == c] for c in range(num_classes)]


def loop_push(bank, rows_per_class: list[torch.Tensor]) -> None:
    """Per-class ring write (slices) and centre, one class at a time."""
    k = bank.capacity
    for c, rows in enumerate(rows_per_class):
        n = rows.shape[0]
        if n == 0:
            bank.centres[c] = bank.rows[c, :int(bank.count[c])].mean(0) if bank.count[c] else 0.0
            continue
        ptr = int(bank.ptr[c])
        keep = rows[-k:]
        start = (ptr + n - keep.shape[0]) % k
        first = min(k - start, keep.shape[0])
        bank.rows[c, start:start + first] = keep[:first]
        bank.rows[c, :keep.shape[0] - first] = keep[first:]
        bank.ptr[c] = (ptr + n) % k
        bank.count[c] = min(int(bank.count[c]) + n, k)
        bank.centres[c] = bank.rows[c, :int(bank.count[c])].mean(0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--crop", type=int, default=480)
    ap.add_argument("--batch", type=int, default=4, help="images per step (the first half labelled)")
    ap.add_argument("--latent", type=int, default=32)
    ap.add_argument("--capacity", type=int, default=2560)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--smoke-test", action="store_true")
    a = ap.parse_args(argv)
    if a.smoke_test:
        a.crop, a.repeats = 96, 2
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    h = a.crop // 4
    n_lab = max(1, a.batch // 2)
    vec = NPHead(8, a.classes, a.latent, channels=8, bank_capacity=a.capacity)
    ref = NPHead(8, a.classes, a.latent, channels=8, bank_capacity=a.capacity)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        q = torch.randn(a.batch, a.latent, h, h)
        # blob-like labels: a few classes per image, some ignore pixels, like real masks at stride 4
        coarse = torch.randint(0, a.classes, (a.batch, 1, 4, 4)).float()
        lab = F.interpolate(coarse, size=(h, h), mode="nearest")[:, 0].long()
        lab[:, :, :2] = IGNORE
        return q, lab

    drawn: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def vectorised(q: torch.Tensor, lab: torch.Tensor) -> None:
        rows, cls = vec.select_rows(q, lab)
        ctx = vec.select_rows(q[:n_lab], lab[:n_lab])
        vec.update_banks(*ctx, rows, cls)
        drawn["ctx"], drawn["tgt"] = ctx, (rows, cls)

    def looped(q: torch.Tensor, lab: torch.Tensor) -> None:  # the same rows, written class by class
        with torch.no_grad():
            for bank, key in ((ref.context_bank, "ctx"), (ref.target_bank, "tgt")):
                rows, cls = drawn[key]
                loop_push(bank, [rows[cls == c] for c in range(a.classes)])

    def released_upsample(q: torch.Tensor, lab: torch.Tensor) -> None:
        with torch.no_grad():
            up = F.interpolate(q, size=(a.crop, a.crop), mode="bilinear", align_corners=False)
            full = F.interpolate(lab[:, None].float(), size=(a.crop, a.crop), mode="nearest")[:, 0].long()
            loop_select(up, full, a.classes)

    times: dict[str, list[float]] = {"vectorised": [], "per-class loop": [], "released upsample+loop": []}
    for i in range(a.repeats + 1):
        q, lab = batch()
        for name, f in (("vectorised", vectorised), ("per-class loop", looped),
                        ("released upsample+loop", released_upsample)):
            t0 = time.process_time()
            f(q, lab)
            if i:  # the first round is warm-up
                times[name].append(time.process_time() - t0)
        for b in ("context_bank", "target_bank"):
            vb, rb = getattr(vec, b), getattr(ref, b)
            assert torch.equal(vb.rows, rb.rows) and torch.equal(vb.count, rb.count), "paths disagree"
            torch.testing.assert_close(vb.centres, rb.centres)
    times["released upsample+loop"] = [u + lp for u, lp in zip(times["released upsample+loop"],
                                                                times["per-class loop"])]
    print(f"{a.classes} classes, crop {a.crop} -> labels {h}x{h}, batch {a.batch} ({n_lab} labelled), L={a.latent}, "
          f"K={a.capacity}, threads {torch.get_num_threads()}, repeats {a.repeats} (interleaved); banks identical")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"  {k:24s}: median {v * 1e3:8.2f} ms (process CPU time)")
    print(f"per-class loop / vectorised: {med['per-class loop'] / med['vectorised']:.2f}x; "
          f"released upsample+loop / vectorised: {med['released upsample+loop'] / med['vectorised']:.2f}x")
    where_rows_come_from(h, a.capacity)


def where_rows_come_from(h: int, capacity: int) -> None:
    """Two h x h maps of one class, feature = the pixel's row index y: the stored rows' mean y and second-image
    share after one write, default (random, budget K) vs a raster-order FIFO of every pixel."""
    y = torch.arange(h, dtype=torch.float32)[:, None].expand(h, h)
    query = torch.stack([y, y + 1000.0])[:, None]  # image 2 rows carry +1000
    labels = torch.zeros(2, h, h, dtype=torch.long)
    for name, mode in (("default random write", "intended"), ("raster-order FIFO (every row)", "released")):
        head = NPHead(8, 1, 1, channels=8, bank_capacity=capacity, np_mode=mode)
        rows, cls = head.select_rows(query, labels)
        head.update_banks(rows, cls, rows, cls)
        stored = head.context_bank.rows[0, :int(head.context_bank.count[0]), 0]
        second = stored >= 1000
        print(f"  {name:30s}: {stored.numel()} rows of {2 * h * h}, mean row index "
              f"{(stored - 1000.0 * second).mean():.1f} (unbiased {(h - 1) / 2:.1f}), "
              f"from the second image {second.float().mean():.0%}")


if __name__ == "__main__":
    main()
