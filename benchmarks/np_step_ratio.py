"""P1: NP-head training step time / plain-classifier step time, same backbone and batch (target <= 1.15x).

    .venv/bin/python benchmarks/np_step_ratio.py                      # ResNet-50 OS8, crop 321, batch 2, T=5
    .venv/bin/python benchmarks/np_step_ratio.py --crop 161 --repeats 3   # quicker
    .venv/bin/python benchmarks/np_step_ratio.py --smoke-test
    .venv/bin/python benchmarks/np_step_ratio.py --threads 1 --decoders spec film_last   # one NP model per decoder

A step is what the student does in the loop: forward (NP: T latent samples), cross-entropy on the mean logits
upsampled to the crop, + KL for NP, backward, SGD step, and for NP the bank write (select_rows + update_banks,
default budget). ``--decoders`` picks the NP decoders timed (``auto`` = the default one).
The two models are timed alternately (interleaved repeats) and the median ratio is printed, for wall time and for
process CPU time (with --threads 1 the latter is robust on a machine shared with other jobs).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from npsemiseg.config import ModelConfig
from npsemiseg.models import build_model, downsample_labels, upsample_logits
from npsemiseg.models.build import resolve_decoder


def make_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, t: int, kl_weight: float):
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step() -> None:
        out = model(x, num_samples=t)
        loss = F.cross_entropy(upsample_logits(out.logits.mean(0), y.shape[-2:]), y, ignore_index=255)
        loss = loss + kl_weight * out.kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        head = model.np_head
        if head is not None:
            lab = downsample_labels(y, out.query.shape[-2:])
            rows, cls = head.select_rows(out.query, lab)
            head.update_banks(rows, cls, rows, cls)

    return step


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--output-stride", type=int, default=8)
    ap.add_argument("--crop", type=int, default=321)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--t", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--no-flops", action="store_true", help="skip the (noise-free) FLOP count of one step each")
    ap.add_argument("--decoders", nargs="+", default=["auto"], help="NP decoders (model.decoder values)")
    ap.add_argument("--smoke-test", action="store_true", help="tiny model, one repeat")
    a = ap.parse_args(argv)
    if a.smoke_test:
        a.backbone, a.width, a.crop, a.repeats, a.warmup = "resnet18", 8, 64, 1, 0
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    aspp = 256 if a.width >= 64 else 4 * a.width
    common = dict(backbone=a.backbone, width=a.width, output_stride=a.output_stride, aspp_channels=aspp)
    x = torch.randn(a.batch, 3, a.crop, a.crop)
    y = torch.randint(0, a.classes, (a.batch, a.crop, a.crop))
    y[:, :4] = 255
    steps = {}
    model = build_model(ModelConfig(head="plain", **common), a.classes).train()
    steps["plain"] = make_step(model, x, y, 1, 0.005)
    for dec in a.decoders:
        mcfg = ModelConfig(head="np", decoder=dec, **common)
        model = build_model(mcfg, a.classes).train()
        steps[f"np[{resolve_decoder(mcfg)}]"] = make_step(model, x, y, a.t, 0.005)
    nps = [k for k in steps if k != "plain"]
    for _ in range(a.warmup):
        for s in steps.values():
            s()
    wall: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(a.repeats):
        for name, s in steps.items():
            w0, c0 = time.perf_counter(), time.process_time()
            s()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    print(f"{a.backbone} width {a.width} OS{a.output_stride} crop {a.crop} batch {a.batch} T={a.t} "
          f"threads {torch.get_num_threads()} repeats {a.repeats} (interleaved)")
    if not a.no_flops:
        flops = {}
        for name, s in steps.items():
            with FlopCounterMode(display=False) as counter:
                s()
            flops[name] = counter.get_total_flops()
        for name in nps:
            print(f"  conv/matmul FLOPs per step (forward + backward, counted by torch): "
                  f"plain {flops['plain'] / 1e9:.1f} G, {name} {flops[name] / 1e9:.1f} G, "
                  f"ratio {flops[name] / flops['plain']:.3f}x")
    for label, times in (("wall", wall), ("process CPU", cpu)):
        for name in steps:
            print(f"  {label} {name:14s} step: median {statistics.median(times[name]):.3f} s  "
                  f"[{', '.join(f'{v:.3f}' for v in times[name])}]")
        for name in nps:
            ratios = [n / p for n, p in zip(times[name], times["plain"])]
            print(f"{name} step / plain step ({label} time): median {statistics.median(ratios):.3f}x "
                  f"(per-repeat {', '.join(f'{r:.3f}' for r in ratios)}; target <= 1.15x)")


if __name__ == "__main__":
    main()
