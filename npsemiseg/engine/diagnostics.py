"""Pseudo-label diagnostics of the semi-supervised step: how much of the unlabelled data the threshold lets
through (coverage) and how much of that is right (accuracy against masks the unlabelled images may have).

They explain when the unlabelled term helps: the loss learns from ``coverage x accuracy`` of the pixels and is
misled by ``coverage x (1 - accuracy)``.
"""
from __future__ import annotations

import torch

from npsemiseg.data.labels import IGNORE, PAD
from npsemiseg.engine.losses import PseudoLabels


@torch.no_grad()
def pl_metrics(pl: PseudoLabels, gt: torch.Tensor | None = None) -> dict[str, float]:
    """Pseudo-label diagnostics on the weak view (before CutMix), over unpadded pixels.

    ``train/pl_coverage``: fraction of pixels in the loss mask. With ground truth (B x H x W, 255 = unknown):
    ``train/pl_accuracy`` = accuracy of the masked pseudo-labels, ``train/teacher_acc_u`` = accuracy of all
    pseudo-labels (threshold 0), ``train/pl_correct`` = fraction of known pixels that are masked and right
    (coverage x accuracy, the useful signal); ``train/pl_coverage_cls`` and ``train/pl_correct_cls`` are the
    same two shares averaged over the ground-truth classes present (so a large easy background cannot hide
    that the objects get no pseudo-labels). NaN where nothing is known or nothing is masked.
    """
    valid = pl.ignore != PAD
    out = {"train/pl_coverage": float(pl.mask.sum() / valid.sum().clamp_min(1))}
    if gt is None:
        return out
    known = valid & (gt != IGNORE)
    right = (pl.label == gt) & known
    n_known, n_masked = int(known.sum()), int((pl.mask & known).sum())
    nan = float("nan")
    out["train/pl_accuracy"] = float((right & pl.mask).sum()) / n_masked if n_masked else nan
    out["train/teacher_acc_u"] = float(right.sum()) / n_known if n_known else nan
    out["train/pl_correct"] = float((right & pl.mask).sum()) / n_known if n_known else nan
    # class-balanced: mean over the ground-truth classes present of each class's masked / masked-and-right share
    cls = gt[known]
    if cls.numel():
        n_cls = int(cls.max()) + 1
        total = torch.bincount(cls, minlength=n_cls).float()
        masked = torch.bincount(cls[pl.mask[known]], minlength=n_cls).float()
        good = torch.bincount(cls[(right & pl.mask)[known]], minlength=n_cls).float()
        present = total > 0
        out["train/pl_coverage_cls"] = float((masked[present] / total[present]).mean())
        out["train/pl_correct_cls"] = float((good[present] / total[present]).mean())
    else:
        out["train/pl_coverage_cls"] = out["train/pl_correct_cls"] = nan
    return out
