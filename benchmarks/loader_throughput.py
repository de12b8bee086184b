"""Data-loader throughput: images/s for labelled (weak view) and unlabelled (weak + strong + CutMix box) items
with N DataLoader workers, measured side by side with interleaved repeats.

    .venv/bin/python benchmarks/loader_throughput.py                 # VOC-sized JPEGs (375x500), crop 321
    .venv/bin/python benchmarks/loader_throughput.py --smoke-test     # seconds
    .venv/bin/python benchmarks/loader_throughput.py --root /data/voc --split voc/classic/1464

Without ``--root`` it writes a list-file dataset of synthetic images at ``--image-size`` into a temp folder (so
JPEG decoding costs what it costs on VOC) and reads it through ``build_datasets`` with ``dataset=list``.
Each repeat rebuilds the DataLoader, drops the first batch (worker start-up), then times ``--batches`` batches.
Ratios are against 0 workers (loading in the main process) for the same item kind; medians over repeats.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from npsemiseg.config import Config, apply_overrides
from npsemiseg.data.build import build_datasets
from npsemiseg.data.io import save_image, save_mask
from npsemiseg.data.seeding import loader_seed_kwargs
from npsemiseg.data.synthetic import boundary_ring, render_voc


def write_list_dataset(folder: Path, n: int, hw: tuple[int, int]) -> dict[str, str]:
    """n synthetic JPEG + palette-PNG pairs and the three list files; returns config overrides."""
    (folder / "img").mkdir(parents=True)
    (folder / "mask").mkdir()
    for i in range(n + 1):  # the last pair is the (unused) val set
        img, mask = render_voc(hw[0], hw[1], 0.5, np.random.default_rng(i))
        save_image(folder / "img" / f"{i:04d}.jpg", img)
        save_mask(folder / "mask" / f"{i:04d}.png", boundary_ring(mask))
    pairs = [f"img/{i:04d}.jpg mask/{i:04d}.png\n" for i in range(n)]
    (folder / "lab.txt").write_text("".join(pairs[: n // 2]))
    (folder / "unl.txt").write_text("".join(p.split()[0] + "\n" for p in pairs[n // 2:]))
    (folder / "val.txt").write_text(f"img/{n:04d}.jpg mask/{n:04d}.png\n")
    return {"data.dataset": "list", "data.num_classes": 21, "data.labelled_list": str(folder / "lab.txt"),
            "data.unlabelled_list": str(folder / "unl.txt"), "data.val_list": str(folder / "val.txt")}


def time_loader(ds, workers: int, batch: int, batches: int, seed: int) -> float:
    """Images per second over ``batches`` batches after one warm-up batch."""
    dl = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                    **loader_seed_kwargs(seed))
    it = iter(dl)
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t0
    del it
    return batches * batch / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="", help="real VOC root (holding VOCdevkit/); default: synthetic list data")
    ap.add_argument("--split", default="voc/classic/1464")
    ap.add_argument("--image-size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"))
    ap.add_argument("--crop", type=int, default=321)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=(0, 1, 2))
    ap.add_argument("--smoke-test", action="store_true", help="tiny sizes, one repeat")
    a = ap.parse_args()
    if a.smoke_test:
        a.image_size, a.crop, a.batches, a.repeats, a.workers = (64, 80), 48, 2, 1, (0, 1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        if a.root:
            over = {"data.dataset": "voc", "data.root": a.root, "data.split": a.split}
        else:
            n = max(16, 2 * a.batch * (a.batches + 2))
            over = write_list_dataset(Path(tmp), n, tuple(a.image_size))
        over |= {"data.crop_size": a.crop, "data.num_workers": 0}
        td = build_datasets(apply_overrides(Config(), over))
        kinds = {"labelled (weak)": td.labelled, "unlabelled (weak+strong+box)": td.unlabelled}
        rates: dict[tuple[str, int], list[float]] = {(k, w): [] for k in kinds for w in a.workers}
        for r in range(a.repeats):  # interleaved: every configuration once per repeat
            for k, ds in kinds.items():
                for w in a.workers:
                    rates[(k, w)].append(time_loader(ds, w, a.batch, a.batches, seed=r))
    src = a.root or f"synthetic {a.image_size[0]}x{a.image_size[1]} JPEG"
    print(f"# {src}, crop {a.crop}, batch {a.batch}, {a.batches} batches x {a.repeats} repeats, "
          f"torch threads {torch.get_num_threads()} (items are built single-threaded), "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'items':32s} {'workers':>7s} {'img/s':>8s} {'vs 0 workers':>13s}")
    for k in kinds:
        base = statistics.median(rates[(k, a.workers[0])])
        for w in a.workers:
            med = statistics.median(rates[(k, w)])
            print(f"{k:32s} {w:7d} {med:8.1f} {med / base:12.2f}x")
    lab0 = statistics.median(rates[("labelled (weak)", a.workers[0])])
    unl0 = statistics.median(rates[("unlabelled (weak+strong+box)", a.workers[0])])
    print(f"unlabelled / labelled item cost at {a.workers[0]} workers: {lab0 / unl0:.2f}x")


if __name__ == "__main__":
    main()
