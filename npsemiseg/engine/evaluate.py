"""Evaluation: mIoU + uncertainty quality over a val set, three modes, sharded across ranks (docs/method.md §5).

Modes (``train.val_mode``):
- ``original``: the full image in one pass;
- ``center_crop``: the central crop_size x crop_size window of image and mask;
- ``sliding_window``: windows of crop_size with stride 2/3 crop (the last window flush with the border), each
  window's mean-over-T probabilities averaged where windows overlap.
The prediction is the mean over T samples of the softmax of the logits upsampled to the image (for the NP head
``model(x, num_samples=T)`` runs the trunk once and the decoder T times).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from npsemiseg.engine.context import RunContext
from npsemiseg.engine.sampler import shard_indices
from npsemiseg.metrics import ConfusionMatrix, UncertaintyMeter
from npsemiseg.models.resize import upsample_logits


def _window_starts(full: int, window: int, stride: int) -> list[int]:
    starts = list(range(0, max(full - window, 0) + 1, stride))
    if starts[-1] + window < full:
        starts.append(full - window)
    return starts


@torch.no_grad()
def forward_probs(model: nn.Module, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Run ``model`` on ``x``: B x C x H x W mean over T samples of softmax(logits upsampled to x's size).

    Unlike ``models.mean_probs`` (logits in, at their own resolution) it upsamples one sample at a time, so
    only one full-resolution T=1 tensor is alive at once."""
    logits = model(x, num_samples=num_samples).logits  # T x B x C x h x w
    size = x.shape[-2:]
    acc = None
    for t in range(logits.shape[0]):
        p = torch.softmax(upsample_logits(logits[t].float(), size), dim=1)
        acc = p if acc is None else acc.add_(p)
    return acc / logits.shape[0]


@torch.no_grad()
def sliding_window_probs(model: nn.Module, x: torch.Tensor, num_samples: int, window: int) -> torch.Tensor:
    """Mean probabilities from windows of ``window`` px, stride ceil(2/3 window), averaged over overlaps.
    Images smaller than the window are zero-padded (in normalised space) and cropped back."""
    _, _, h, w = x.shape
    ph, pw = max(h, window), max(w, window)
    if (ph, pw) != (h, w):
        x = F.pad(x, (0, pw - w, 0, ph - h))
    stride = max(1, math.ceil(window * 2 / 3))
    acc, count = None, torch.zeros(1, 1, ph, pw, device=x.device)
    for top in _window_starts(ph, window, stride):
        for left in _window_starts(pw, window, stride):
            p = forward_probs(model, x[:, :, top : top + window, left : left + window], num_samples)
            if acc is None:
                acc = torch.zeros(x.shape[0], p.shape[1], ph, pw, device=x.device)
            acc[:, :, top : top + window, left : left + window] += p
            count[:, :, top : top + window, left : left + window] += 1
    return (acc / count)[:, :, :h, :w]


def center_crop(t: torch.Tensor, size: int) -> torch.Tensor:
    """Central size x size window of the last two dims (the whole extent where the image is smaller)."""
    h, w = t.shape[-2:]
    top, left = max((h - size) // 2, 0), max((w - size) // 2, 0)
    return t[..., top : top + size, left : left + size]


@torch.no_grad()
def predict_probs(model: nn.Module, x: torch.Tensor, num_samples: int, mode: str, crop_size: int) -> torch.Tensor:
    """Mean probabilities for a batch of images in one of the three modes (center_crop crops the image first)."""
    if mode == "original":
        return forward_probs(model, x, num_samples)
    if mode == "center_crop":
        return forward_probs(model, center_crop(x, crop_size), num_samples)
    if mode == "sliding_window":
        return sliding_window_probs(model, x, num_samples, crop_size)
    raise ValueError(f"unknown eval mode {mode!r}")


def _batches(dataset: Dataset, indices: list[int], batch_size: int):
    """Stack consecutive items of equal size into batches of at most batch_size."""
    group: list[dict[str, Any]] = []
    for i in indices:
        item = dataset[i]
        if group and (len(group) >= batch_size or group[0]["image"].shape != item["image"].shape):
            yield group
            group = []
        group.append(item)
    if group:
        yield group


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    num_classes: int,
    *,
    mode: str = "original",
    crop_size: int = 321,
    num_samples: int = 1,
    ctx: RunContext | None = None,
    limit: int = 0,
    batch_size: int = 1,
    seed: int = 0,
    prefix: str = "val/",
) -> dict[str, float]:
    """Metrics over ``dataset`` (items ``{"image", "mask"}``), this rank's shard, reduced over ranks.

    Returns ``{prefix}miou``, ``pixel_acc``, ``ece``, ``pavpu``, ``err_auroc`` and ``iou/<c>`` per class (nan for
    classes absent from target and prediction). An NP head with empty banks warns once (its own warning).
    Latent sampling uses a fixed seed inside a forked RNG, so
    evaluating never changes the training random stream and two evaluations of one model agree.
    """
    ctx = ctx or RunContext("cpu")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    n = len(dataset) if not limit else min(limit, len(dataset))
    cm = ConfusionMatrix(num_classes)
    um = UncertaintyMeter(num_classes)
    cm.mat = cm.mat.to(device)  # every rank reduces on the same device, even with an empty shard
    um.reset(device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed + 7919 * ctx.rank)
        for group in _batches(dataset, shard_indices(n, ctx.rank, ctx.world_size), batch_size):
            x = torch.stack([g["image"] for g in group]).to(device)
            y = torch.stack([g["mask"] for g in group]).to(device)
            probs = predict_probs(model, x, num_samples, mode, crop_size)
            if mode == "center_crop":
                y = center_crop(y, crop_size)
            cm.update(probs.argmax(1), y)
            um.update(probs, y)
    model.train(was_training)
    cm.all_reduce(ctx.all_reduce_sum)
    um.all_reduce(ctx.all_reduce_sum)
    seg, unc = cm.compute(), um.compute()
    out = {
        f"{prefix}miou": float(seg["miou"]),
        f"{prefix}pixel_acc": float(seg["pixel_acc"]),
        f"{prefix}ece": unc["ece"],
        f"{prefix}pavpu": unc["pavpu"],
        f"{prefix}err_auroc": unc["err_auroc"],
    }
    for c, v in enumerate(seg["iou"]):
        out[f"{prefix}iou/{c}"] = float(v)
    return out
