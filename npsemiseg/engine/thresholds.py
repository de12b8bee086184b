"""Class-adaptive confidence thresholds (``train.threshold_mode=class_adaptive``).

Each class keeps a running mean of the teacher's confidence on the pixels it pseudo-labels; the threshold of a
class is ``conf_threshold x its mean / the largest mean`` (FlexMatch/FreeMatch-style normalisation). On the
demo data the background is learnt first and is far more confident than the objects, so one global threshold
lets through mostly background; scaled thresholds let the objects' pseudo-labels in as well.
"""
from __future__ import annotations

import torch

from npsemiseg.engine.losses import PAD, PseudoLabels

CLASS_CONF_MOMENTUM = 0.95  # EMA momentum of the per-class mean confidence (per step)


def class_thresholds(class_conf: torch.Tensor, threshold: float) -> torch.Tensor:
    """Class-adaptive thresholds: ``threshold x class_conf / max(class_conf)``, where ``class_conf`` holds each
    class's running mean teacher confidence (FlexMatch/FreeMatch-style normalisation: the most confident class
    keeps ``threshold``, classes the teacher is less sure of get proportionally lower ones)."""
    return threshold * class_conf / class_conf.max().clamp_min(1e-6)


@torch.no_grad()
def update_class_conf(class_conf: torch.Tensor, pl: PseudoLabels, momentum: float) -> torch.Tensor:
    """EMA update of each class's mean confidence over the unpadded pixels pseudo-labelled with it (classes
    absent from the batch keep their value)."""
    valid = pl.ignore != PAD
    lab, conf = pl.label[valid], pl.conf[valid].float()
    n = class_conf.numel()
    count = torch.bincount(lab, minlength=n)[:n].float()
    total = torch.bincount(lab, weights=conf, minlength=n)[:n]
    seen = count > 0
    out = class_conf.clone()
    out[seen] = momentum * class_conf[seen] + (1 - momentum) * total[seen] / count[seen]
    return out
