"""Resizing between the image grid and the feature grid: bilinear for logits, nearest for labels.

The lowest module of ``models/``: the NP head (bank rows at the feature resolution), ``build`` (re-exports), the
training step and evaluation all resize through these two functions, so a label map and its logits always agree.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def upsample_logits(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of T x B x C x h x w (or B x C x h x w) logits to ``size`` = (H, W); no-op when there."""
    size = tuple(int(s) for s in size)
    if logits.shape[-2:] == size:
        return logits
    lead = logits.shape[:-3]
    flat = logits.reshape(-1, *logits.shape[-3:])
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.view(*lead, *out.shape[1:])


def downsample_labels(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of B x H x W integer labels to ``size`` (keeps 254/255 exactly).

    Source row of output row i is floor(i * H / h) in integer arithmetic (torch's ``mode="nearest"`` computes the
    same index in float32 and picks the same pixels for the stride-4 feature grid of any square crop up to 1200).
    """
    h, w = (int(s) for s in size)
    H, W = mask.shape[-2:]  # noqa: N806
    if (H, W) == (h, w):
        return mask
    ys = torch.div(torch.arange(h, device=mask.device) * H, h, rounding_mode="floor")
    xs = torch.div(torch.arange(w, device=mask.device) * W, w, rounding_mode="floor")
    return mask[..., ys[:, None], xs[None, :]]
