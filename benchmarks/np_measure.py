"""Measurements of one trained segmentation model for ``np_ablation.py`` (reuses ``npsemiseg.metrics``).

- mIoU (confusion matrix), ECE and error AUROC (``UncertaintyMeter``), PAvPU over several entropy thresholds;
- pixel accuracy in the interior (>= 2 feature cells from the map's edge) and on the border band;
- interior mutual-information share: sum of MI / sum of predictive entropy H(mean p) over interior pixels, where
  MI = H(mean_t p_t) - mean_t H(p_t) (all pixels, and misclassified pixels only);
- NP heads: the same prediction with both banks' centres zeroed and with their C x L entries shuffled (across
  classes and latent dims; a pure class permutation is an exact invariance of the aggregator), as mIoU change and
  fraction of valid interior pixels whose prediction changes; every variant uses the same latent noise;
- inference time of T samples relative to a plain-head model's single pass (interleaved repeats, minimum).
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from npsemiseg.engine.evaluate import mean_probs
from npsemiseg.metrics import ConfusionMatrix, UncertaintyMeter, entropy, pavpu_counts

PAVPU_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.5)  # uncertainty thresholds as fractions of ln C
STRIDE = 4  # feature stride of F


def _scaled(item: dict, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = item["image"], item["mask"]
    if scale != 1.0:
        size = [round(s * scale) for s in x.shape[-2:]]
        x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
        y = F.interpolate(y[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return x, y


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, num_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                     tuple[int, int]]:
    """(mean probabilities B x C x H x W, mean per-sample entropy B x H x W, feature-map size)."""
    torch.manual_seed(seed)
    logits = model(x, num_samples=num_samples).logits.float()
    size = x.shape[-2:]
    mean_p = ent = None
    for t in range(logits.shape[0]):
        p = torch.softmax(F.interpolate(logits[t], size=size, mode="bilinear", align_corners=False), 1)
        mean_p = p if mean_p is None else mean_p.add_(p)
        e = entropy(p, 1)
        ent = e if ent is None else ent.add_(e)
    n = logits.shape[0]
    return mean_p / n, ent / n, tuple(logits.shape[-2:])


def interior_mask(h: int, w: int, fmap: tuple[int, int], cells: int = 2) -> torch.Tensor:
    """H x W: True for image pixels at least ``cells`` feature cells from the edge of the feature map."""
    my, mx = cells * h / fmap[0], cells * w / fmap[1]
    ys, xs = torch.arange(h)[:, None] + 0.5, torch.arange(w)[None, :] + 0.5
    return (ys >= my) & (ys <= h - my) & (xs >= mx) & (xs <= w - mx)


def _batches(items: list, size: int = 4):
    group: list = []
    for it in items:
        if group and (len(group) >= size or group[0][0].shape != it[0].shape):
            yield torch.stack([g[0] for g in group]), torch.stack([g[1] for g in group])
            group = []
        group.append(it)
    if group:
        yield torch.stack([g[0] for g in group]), torch.stack([g[1] for g in group])


def _predictions(model: nn.Module, batches: list, num_classes: int, num_samples: int, seed: int) -> dict:
    cm, um = ConfusionMatrix(num_classes), UncertaintyMeter(num_classes)
    ln_c = math.log(num_classes)
    curve = torch.zeros(len(PAVPU_FRACTIONS), 4, dtype=torch.long)
    sums = torch.zeros(8, dtype=torch.float64)  # mi, h, mi_err, h_err, ok_in, n_in, ok_border, n_border
    preds, fmap = [], (0, 0)
    for i, (x, y) in enumerate(batches):
        p, ent_t, fmap = predict(model, x, num_samples, seed + i)
        pred = p.argmax(1)
        preds.append(pred)
        cm.update(pred, y)
        um.update(p, y)
        h = entropy(p, 1)
        mi = (h - ent_t).clamp_min(0)
        valid = y < num_classes
        correct = (pred == y) & valid
        for j, frac in enumerate(PAVPU_FRACTIONS):
            curve[j] += pavpu_counts(correct, h, frac * ln_c, 4, 0.5, valid)
        inner = interior_mask(x.shape[-2], x.shape[-1], fmap)[None] & valid
        border = ~interior_mask(x.shape[-2], x.shape[-1], fmap)[None] & valid
        err = inner & ~correct
        sums += torch.tensor([mi[inner].sum(), h[inner].sum(), mi[err].sum(), h[err].sum(),
                              correct[inner].sum(), inner.sum(), correct[border].sum(), border.sum()],
                             dtype=torch.float64)
    unc = um.compute()
    pv = [float(c[0] + c[3]) / max(1, int(c.sum())) for c in curve]
    return {"miou": float(cm.compute()["miou"]), "ece": unc["ece"], "err_auroc": unc["err_auroc"],
            "pavpu": pv[PAVPU_FRACTIONS.index(0.5)], "pavpu_curve": pv, "pavpu_thresholds": list(PAVPU_FRACTIONS),
            "ln_c": ln_c, "mi_share": float(sums[0] / sums[1].clamp_min(1e-12)),
            "mi_share_err": float(sums[2] / sums[3].clamp_min(1e-12)),
            "acc_interior": float(sums[4] / sums[5].clamp_min(1)), "acc_border": float(sums[6] / sums[7].clamp_min(1)),
            "feature_map": list(fmap), "_preds": preds}


def _changed(base: list, other: list, batches: list, num_classes: int, fmap: tuple[int, int]) -> float:
    n = tot = 0
    for a, b, (x, y) in zip(base, other, batches):
        inner = interior_mask(x.shape[-2], x.shape[-1], fmap)[None] & (y < num_classes)
        n += int(((a != b) & inner).sum())
        tot += int(inner.sum())
    return n / max(1, tot)


@torch.no_grad()
def _time_rel(model: nn.Module, plain: nn.Module, x: torch.Tensor, num_samples: int, reps: int = 3) -> float:
    best_m, best_p = math.inf, math.inf
    for _ in range(reps):  # interleaved so machine load hits both alike
        t0 = time.perf_counter()
        mean_probs(model, x, num_samples)  # the engine's inference: mean over T of softmax(upsampled logits)
        t1 = time.perf_counter()
        mean_probs(plain, x, 1)
        t2 = time.perf_counter()
        best_m, best_p = min(best_m, t1 - t0), min(best_p, t2 - t1)
    return best_m / best_p


@torch.no_grad()
def measure_model(model: nn.Module, dataset, num_classes: int, n_val: int, scale: float, num_samples: int,
                  seed: int, plain: nn.Module) -> dict:
    """All figures for one trained model (``model`` and ``plain`` in eval mode afterwards)."""
    model.eval()
    plain.eval()
    items = [_scaled(dataset[i], scale) for i in range(min(n_val, len(dataset)))]
    batches = list(_batches(items))
    base = _predictions(model, batches, num_classes, num_samples, seed)
    preds, fmap = base.pop("_preds"), tuple(base["feature_map"])
    out = dict(base)
    head = getattr(model, "np_head", None)
    if head is not None:
        saved = {b: getattr(head, b).centres.clone() for b in ("context_bank", "target_bank")}
        g = torch.Generator().manual_seed(0)
        perm = torch.randperm(saved["context_bank"].numel(), generator=g)
        for name, fn in (("zero", torch.zeros_like), ("shuffle", lambda c: c.flatten()[perm].view_as(c))):
            for b, c in saved.items():
                getattr(head, b).centres.copy_(fn(c))
            alt = _predictions(model, batches, num_classes, num_samples, seed)
            out[f"{name}_dmiou"] = alt["miou"] - base["miou"]
            out[f"{name}_changed"] = _changed(preds, alt["_preds"], batches, num_classes, fmap)
        for b, c in saved.items():
            getattr(head, b).centres.copy_(c)
        if head.released:  # the released head ignores its banks at eval: what would its trained centres do?
            head.np_mode = "intended"
            out["banks_on_miou"] = _predictions(model, batches, num_classes, num_samples, seed)["miou"]
            head.np_mode = "released"
    out["time_rel"] = _time_rel(model, plain, batches[0][0], num_samples)
    if getattr(model, "head_kind", "") == "mcdropout":
        model.mc_dropout_scope = "full"
        out["time_rel_full"] = _time_rel(model, plain, batches[0][0], num_samples)
        model.mc_dropout_scope = "head"
    return out
