"""Why released mode beats intended mode with the spec decoder: the (z, d) border term and InstanceNorm.

    python benchmarks/np_anomaly.py --runs runs/bench_np_ablation/demo   # after np_ablation.py (np_spec, np_released)

For each trained ``np_spec`` / ``np_released`` (/ ``np_spec_varkl``) run of ``np_ablation.py`` it loads the EMA
teacher and, on the first ``--val`` val images, measures the spec decoder's first layer: the size of the (z, d)
part that the zero-padded border lets through, relative to the conv(F) part, and how much that border term
inflates InstanceNorm's per-channel standard deviation (the factor by which it shrinks every interior pixel's
normalised activation). Measured twice: with the centres the head uses at evaluation, and with the centres it
trained with (the released head trains with its scrambled bank centres but evaluates with zeros). Then the val
mIoU as evaluated, and with the (z, d) term removed (z = d = 0).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


@torch.no_grad()
def first_layer_stats(model, x: torch.Tensor, zero_latent: bool = False) -> dict[str, float]:
    """|latent part| / std(conv F) on the border, and std(dec1 out) / std(conv F part) per channel (mean)."""
    head = model.np_head
    dec = head.decoder
    feats = model.encoder(x)
    query = head.phi(feats)
    mc, mt = head._centres()
    from npsemiseg.models.np_head import attend_mean

    pooled_c, pooled_t = attend_mean(query, mc), attend_mean(query, mt)
    mu, s = head.latent(pooled_t)
    z = (mu + s * torch.randn_like(mu))[None]
    d = pooled_c
    if zero_latent:
        z, d = torch.zeros_like(z), torch.zeros_like(d)
    base = dec._conv_f(feats)  # B x Ch x h x w
    lat = dec._latent_part(feats, z, d)[0]
    full = base + lat
    ring = torch.ones(base.shape[-2:], dtype=torch.bool)
    ring[1:-1, 1:-1] = False
    sd_base = base.std(dim=(2, 3))
    return {"border_term": float((lat[..., ring].abs().mean(-1) / sd_base).mean()),
            "norm_inflation": float((full.std(dim=(2, 3)) / sd_base).mean()),
            "d_norm": float(d.norm(dim=1).mean()), "z_norm": float(z[0].norm(dim=1).mean())}


def grad_norms(model, x: torch.Tensor, y: torch.Tensor, kl_weight: float, clip: float) -> dict[str, float]:
    """Training-mode gradient norms over all parameters of the supervised CE and of kl_weight * KL (one batch),
    and the factor ``clip_grad_norm_`` would scale the summed gradient by."""
    import torch.nn.functional as F

    model.train()
    out = model(x, num_samples=2)
    logits = F.interpolate(out.logits.mean(0), size=y.shape[-2:], mode="bilinear", align_corners=False)
    ce = F.cross_entropy(logits, y.masked_fill(y >= 254, 255), ignore_index=255)
    params = [p for p in model.parameters() if p.requires_grad]
    g_ce = torch.autograd.grad(ce, params, retain_graph=True, allow_unused=True)
    g_kl = torch.autograd.grad(kl_weight * out.kl, params, allow_unused=True)
    def norm(gs):
        return float(torch.sqrt(sum((g.float() ** 2).sum() for g in gs if g is not None)))
    total = norm([a if b is None else (b if a is None else a + b) for a, b in zip(g_ce, g_kl)])
    model.eval()
    return {"grad_ce": norm(g_ce), "grad_kl": norm(g_kl), "clip_factor": min(1.0, clip / max(total, 1e-12)),
            "kl": float(out.kl)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", default=[str(REPO / "runs" / "bench_np_ablation" / "demo")],
                    help="folders holding <variant>_s<seed>/ runs of np_ablation.py")
    ap.add_argument("--val", type=int, default=24)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from np_measure import _batches, _predictions

    from npsemiseg.config import load_config
    from npsemiseg.data import build_datasets
    from npsemiseg.engine.checkpoint import load_checkpoint
    from npsemiseg.models import build_model

    rows = []
    for folder in args.runs:
        for run in sorted(Path(folder).glob("np_*_s*")):
            variant = run.name.rsplit("_s", 1)[0]
            if variant not in ("np_spec", "np_released", "np_spec_varkl"):
                continue
            ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
            cfg = load_config(None, {**_flat(ckpt["config"])})
            model = build_model(cfg.model, int(ckpt["num_classes"]))
            model.load_state_dict(ckpt["teacher"])
            model.eval()
            val = build_datasets(cfg).val
            batches = list(_batches([(val[i]["image"], val[i]["mask"]) for i in range(min(args.val, len(val)))]))
            x = torch.cat([b[0] for b in batches])
            torch.manual_seed(0)
            ev = first_layer_stats(model, x)
            head = model.np_head
            student = build_model(cfg.model, int(ckpt["num_classes"]))
            student.load_state_dict(ckpt["model"])
            y = torch.cat([b[1] for b in batches])
            torch.manual_seed(0)
            gn = grad_norms(student, x[:8], y[:8], cfg.model.kl_weight, cfg.train.grad_clip)
            mode = head.np_mode
            head.np_mode = "intended"  # the centres the head trained with (released: its scrambled banks)
            tr = first_layer_stats(model, x)
            head.np_mode = mode
            n_cls = int(ckpt["num_classes"])
            miou = _predictions(model, batches, n_cls, 20, cfg.seed)["miou"]
            head.decode = lambda f, z, d, h=head: h.decoder(f, torch.zeros_like(z), torch.zeros_like(d))
            miou0 = _predictions(model, batches, n_cls, 20, cfg.seed)["miou"]
            del head.decode
            rows.append({"variant": variant, "run": run.name, "miou": miou, "miou_no_latent": miou0, **gn,
                         **{f"eval_{k}": v for k, v in ev.items()}, **{f"train_{k}": v for k, v in tr.items()}})
            print(json.dumps(rows[-1]), flush=True)
    keys = ["miou", "miou_no_latent", "eval_border_term", "eval_norm_inflation", "eval_d_norm", "train_d_norm",
            "kl", "grad_ce", "grad_kl", "clip_factor"]
    print("\n| variant | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for v in dict.fromkeys(r["variant"] for r in rows):
        vr = [r for r in rows if r["variant"] == v]
        cells = []
        for k in keys:
            xs = [r[k] for r in vr]
            sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
            cells.append(f"{statistics.mean(xs):.4f} +- {sd:.4f}")
        print(f"| {v} (n={len(vr)}) | " + " | ".join(cells) + " |")
    return 0


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


if __name__ == "__main__":
    sys.exit(main())
