"""Losses and pseudo-label helpers of the mean-teacher step (docs/method.md §4).

Label values: 255 = ignore (ground-truth void), 254 = padding of unlabelled crops. Neither ever contributes to a
loss. All functions take logits/probabilities already at the label resolution.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from npsemiseg.data.labels import IGNORE, PAD
from npsemiseg.metrics import entropy as pixel_entropy


def ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over pixels whose label is neither 255 nor 254 (0 when there are none)."""
    target = target.masked_fill(target == PAD, IGNORE)
    if not bool((target != IGNORE).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=IGNORE)


def ohem_ce_loss(
    logits: torch.Tensor, target: torch.Tensor, thresh: float = 0.7, min_kept: int = 100000
) -> torch.Tensor:
    """Online hard example mining CE: keep pixels whose true-class probability is below ``thresh``,
    but at least the ``min_kept`` hardest valid pixels (all of them when fewer are valid)."""
    target = target.masked_fill(target == PAD, IGNORE)
    valid = target != IGNORE
    n_valid = int(valid.sum())
    if n_valid == 0:
        return logits.sum() * 0.0
    pixel_ce = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    if min_kept >= n_valid:
        return pixel_ce[valid].mean()
    with torch.no_grad():
        prob = torch.exp(-pixel_ce[valid].float())  # probability of the true class
        kth = torch.kthvalue(prob, max(min_kept, 1)).values
        thr = torch.maximum(kth, torch.tensor(thresh, device=prob.device))
        keep = torch.zeros_like(valid)
        keep[valid] = prob <= thr
    return pixel_ce[keep].mean()


@dataclass
class PseudoLabels:
    """Teacher output on the weak view, all B x H x W: label, confidence, entropy, loss mask, ignore map."""

    label: torch.Tensor
    conf: torch.Tensor
    entropy: torch.Tensor
    mask: torch.Tensor
    ignore: torch.Tensor


def pseudo_labels(
    probs: torch.Tensor, ignore: torch.Tensor, conf_threshold: float | torch.Tensor, entropy_threshold: float = 0.0
) -> PseudoLabels:
    """Pseudo-labels from the teacher's mean probabilities (B x C x H x W).

    The loss mask keeps pixels with confidence >= conf_threshold (and entropy <= entropy_threshold when that is
    > 0), and never pixels where ``ignore`` is 254 (crop padding). A 1-D tensor of C thresholds applies per
    pseudo-label class (class-adaptive thresholds).
    """
    conf, label = probs.max(dim=1)
    entropy = pixel_entropy(probs, dim=1)
    thr = conf_threshold[label] if torch.is_tensor(conf_threshold) else conf_threshold
    mask = (conf >= thr) & (ignore != PAD)
    if entropy_threshold > 0:
        mask &= entropy <= entropy_threshold
    return PseudoLabels(label=label, conf=conf, entropy=entropy, mask=mask, ignore=ignore)


def cutmix(
    images: torch.Tensor, box: torch.Tensor, pl: PseudoLabels, shifts: int = 1
) -> tuple[torch.Tensor, PseudoLabels]:
    """Paste, inside each sample's CutMix box, the batch neighbour's strong image and pseudo-labels.

    Sample i takes the box region from sample (i - shifts) mod B (a roll along the batch), so images, labels,
    confidences, masks and the padding map stay aligned. ``box`` is B x H x W with 1 inside the box.
    """
    inside = box.bool()
    src = torch.roll(images, shifts, dims=0)
    mixed = torch.where(inside.unsqueeze(1), src, images)

    def mix(t: torch.Tensor) -> torch.Tensor:
        return torch.where(inside, torch.roll(t, shifts, dims=0), t)

    return mixed, PseudoLabels(
        label=mix(pl.label), conf=mix(pl.conf), entropy=mix(pl.entropy), mask=mix(pl.mask), ignore=mix(pl.ignore)
    )


def masked_ce_loss(logits: torch.Tensor, pl: PseudoLabels) -> torch.Tensor:
    """Unsupervised CE on pseudo-labels, summed over masked pixels and divided by the non-padding pixels.

    Dividing by every non-padding pixel (not only the confident ones) keeps the term small while few pixels pass
    the threshold early in training, as UniMatch/FixMatch-style implementations do.
    """
    pixel_ce = F.cross_entropy(logits, pl.label, reduction="none")
    denom = (pl.ignore != PAD).sum().clamp_min(1)
    return (pixel_ce * pl.mask.to(pixel_ce.dtype)).sum() / denom

