"""P2: uncertainty inference time, MC dropout T=20 / NP head T=20, same backbone (target >= 8x faster for NP).

    .venv/bin/python benchmarks/uncertainty_speed.py                  # ResNet-50 OS8, crop 321, batch 1, T=20
    .venv/bin/python benchmarks/uncertainty_speed.py --crop 161 --repeats 3
    .venv/bin/python benchmarks/uncertainty_speed.py --smoke-test

Each timed call produces what evaluation needs: T x B x C logits, their mean softmax and its entropy, in eval
mode under no_grad. MC dropout runs T full forward passes; the NP head runs the trunk once and T latent samples
through its decoder (first conv computed once). "np-naive" is the same NP head decoding cat(z, F, d) with T full
decoder passes, to show what the first-conv split buys. Interleaved repeats, medians of wall and process CPU time
(with --threads 1 the latter is robust on a machine shared with other jobs).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from npsemiseg.config import ModelConfig
from npsemiseg.metrics import entropy
from npsemiseg.models import SegModel, build_model, gather_rows, mean_probs


def uncertainty(model: SegModel, x: torch.Tensor, t: int, naive: bool = False) -> torch.Tensor:
    """Entropy of the mean prediction over T samples (B x h x w)."""
    with torch.no_grad():
        if naive:
            head = model.np_head
            feats = model.encoder(x)
            head.decode = head.decode_reference  # instance override: same head, naive decoder
            try:
                logits = head(feats, t)[0]
            finally:
                del head.decode
        else:
            logits = model(x, num_samples=t).logits
        return entropy(mean_probs(logits))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--output-stride", type=int, default=8)
    ap.add_argument("--crop", type=int, default=321)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--t", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--smoke-test", action="store_true", help="tiny model, one repeat")
    a = ap.parse_args(argv)
    if a.smoke_test:
        a.backbone, a.width, a.crop, a.repeats = "resnet18", 8, 64, 1
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    aspp = 256 if a.width >= 64 else 4 * a.width
    common = dict(backbone=a.backbone, width=a.width, output_stride=a.output_stride, aspp_channels=aspp)
    mc = build_model(ModelConfig(head="mcdropout", dropout=0.1, **common), a.classes).eval()
    np_model = build_model(ModelConfig(head="np", **common), a.classes)
    with torch.no_grad():  # give the banks something to attend to, as after training
        q = np_model(torch.randn(1, 3, 64, 64)).query
        lab = torch.randint(0, a.classes, (1, *q.shape[2:]))
        np_model.np_head.update_banks(*gather_rows(q, lab, a.classes), *gather_rows(q, lab, a.classes))
    np_model.eval()
    x = torch.randn(a.batch, 3, a.crop, a.crop)
    runs = {"mcdropout": lambda: uncertainty(mc, x, a.t), "np": lambda: uncertainty(np_model, x, a.t),
            "np-naive": lambda: uncertainty(np_model, x, a.t, naive=True)}
    for f in runs.values():  # warm-up
        f()
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(a.repeats):
        for name, f in runs.items():
            w0, c0 = time.perf_counter(), time.process_time()
            f()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    print(f"{a.backbone} width {a.width} OS{a.output_stride} crop {a.crop} batch {a.batch} T={a.t} "
          f"threads {torch.get_num_threads()} repeats {a.repeats} (interleaved, eval, no_grad)")
    for label, times in (("wall", wall), ("process CPU", cpu)):
        for name in runs:
            print(f"  {label} {name:9s}: median {statistics.median(times[name]):.3f} s  "
                  f"[{', '.join(f'{v:.3f}' for v in times[name])}]")
        med = {k: statistics.median(v) for k, v in times.items()}
        pair = [m / n for m, n in zip(times["mcdropout"], times["np"])]
        print(f"MC dropout / NP ({label} time): median {statistics.median(pair):.2f}x "
              f"(per-repeat {', '.join(f'{r:.2f}' for r in pair)}; target >= 8x); "
              f"MC dropout / NP-naive decoder: {med['mcdropout'] / med['np-naive']:.2f}x; "
              f"NP-naive / NP: {med['np-naive'] / med['np']:.2f}x")


if __name__ == "__main__":
    main()
