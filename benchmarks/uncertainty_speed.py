"""P2: uncertainty inference time, MC dropout T=20 / NP head T=20, same backbone.

    .venv/bin/python benchmarks/uncertainty_speed.py                  # ResNet-50 OS8, crop 321, batch 1, T=20
    .venv/bin/python benchmarks/uncertainty_speed.py --crop 161 --repeats 3
    .venv/bin/python benchmarks/uncertainty_speed.py --smoke-test

Each timed call produces what evaluation needs: T x B x C logits, their mean softmax and its entropy, in eval
mode under no_grad. Two MC-dropout baselines: "mc-full" reruns the whole network T times (the old, unfair
comparison); "mc-head" (the fair one, ``model.mc_dropout_scope=head``) runs the encoder and the first fusion
block once and only the layers after the first Dropout2d T times. The NP heads run the trunk once and T latent
samples through their decoder (``--decoders``; conv(F) once). Interleaved repeats, medians of wall and process
CPU time (with --threads 1 the latter is robust on a machine shared with other jobs).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from npsemiseg.config import ModelConfig
from npsemiseg.metrics import entropy
from npsemiseg.models import SegModel, build_model, gather_rows, mean_probs
from npsemiseg.models.build import resolve_decoder


def uncertainty(model: SegModel, x: torch.Tensor, t: int) -> torch.Tensor:
    """Entropy of the mean prediction over T samples (B x h x w)."""
    with torch.no_grad():
        return entropy(mean_probs(model(x, num_samples=t).logits))


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
    ap.add_argument("--decoders", nargs="+", default=["auto", "spec"], help="NP decoders (model.decoder values)")
    ap.add_argument("--smoke-test", action="store_true", help="tiny model, one repeat")
    a = ap.parse_args(argv)
    if a.smoke_test:
        a.backbone, a.width, a.crop, a.repeats = "resnet18", 8, 64, 1
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    aspp = 256 if a.width >= 64 else 4 * a.width
    common = dict(backbone=a.backbone, width=a.width, output_stride=a.output_stride, aspp_channels=aspp)
    runs = {}
    x = torch.randn(a.batch, 3, a.crop, a.crop)
    mc = build_model(ModelConfig(head="mcdropout", dropout=0.1, **common), a.classes).eval()
    mc_full = build_model(ModelConfig(head="mcdropout", dropout=0.1, mc_dropout_scope="full", **common), a.classes)
    mc_full.load_state_dict(mc.state_dict())
    mc_full.eval()
    runs["mc-full"] = lambda: uncertainty(mc_full, x, a.t)
    runs["mc-head"] = lambda: uncertainty(mc, x, a.t)
    for dec in a.decoders:
        mcfg = ModelConfig(head="np", decoder=dec, **common)
        np_model = build_model(mcfg, a.classes)
        with torch.no_grad():  # give the banks something to attend to, as after training
            q = np_model(torch.randn(1, 3, 64, 64)).query
            lab = torch.randint(0, a.classes, (1, *q.shape[2:]))
            np_model.np_head.update_banks(*gather_rows(q, lab, a.classes), *gather_rows(q, lab, a.classes))
        np_model.eval()
        runs[f"np[{resolve_decoder(mcfg)}]"] = lambda m=np_model: uncertainty(m, x, a.t)
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
    nps = [k for k in runs if k.startswith("np")]
    for label, times in (("wall", wall), ("process CPU", cpu)):
        for name in runs:
            print(f"  {label} {name:14s}: median {statistics.median(times[name]):.3f} s  "
                  f"[{', '.join(f'{v:.3f}' for v in times[name])}]")
        for mc_name in ("mc-full", "mc-head"):
            for name in nps:
                pair = [m / n for m, n in zip(times[mc_name], times[name])]
                print(f"{mc_name} / {name} ({label} time): median {statistics.median(pair):.2f}x "
                      f"(per-repeat {', '.join(f'{r:.2f}' for r in pair)})")


if __name__ == "__main__":
    main()
