"""Streaming segmentation metrics: confusion matrix / mIoU and uncertainty quality (ECE, PAvPU, error AUROC).

Every meter keeps fixed-size count tensors, so evaluation sharded over ranks stays exact: each rank updates its
own meter, then ``meter.all_reduce(ctx.all_reduce_sum)`` sums the counts and every rank computes the same
numbers. Pixels whose target is 255 (ignore) or 254 (padding) never count.

    cm = ConfusionMatrix(21); um = UncertaintyMeter(21)
    for probs, target in batches:           # probs B x C x H x W (mean softmax over T samples)
        cm.update(probs.argmax(1), target); um.update(probs, target)
    cm.all_reduce(ctx.all_reduce_sum); um.all_reduce(ctx.all_reduce_sum)
    cm.compute()["miou"], um.compute()["err_auroc"]
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from npsemiseg.data.labels import IGNORE, PAD

ReduceFn = Callable[[torch.Tensor], "torch.Tensor | None"]


def _valid_mask(target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    return (target != IGNORE) & (target != PAD) & (target != ignore_index)


def _reduce_(tensor: torch.Tensor, fn: ReduceFn | None) -> torch.Tensor:
    """Sum ``tensor`` over ranks with ``fn`` (or torch.distributed when initialised); returns the result."""
    if fn is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(tensor)
        return tensor
    out = fn(tensor)
    return tensor if out is None else out


class ConfusionMatrix:
    """Streaming C x C confusion matrix (rows = target, columns = prediction), int64 on the inputs' device."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE, device: torch.device | str = "cpu") -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # follows the inputs' device on update; set it up front so ranks with an empty shard reduce on it too
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count ``pred`` (class ids) against ``target`` (same shape, e.g. B x H x W); 254/255 are skipped."""
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        if self.mat.device != pred.device:
            self.mat = self.mat.to(pred.device)
        keep = _valid_mask(target, self.ignore_index)
        t, p = target.long(), pred.long()
        n = self.num_classes
        if bool((keep & ((t < 0) | (t >= n) | (p < 0) | (p >= n))).any()):
            raise ValueError(f"labels or predictions outside [0, {n}) (besides 254/255)")
        # skipped pixels go to an extra bin that is dropped (cheaper than boolean indexing)
        idx = torch.where(keep, t * n + p, n * n).reshape(-1)
        self.mat += torch.bincount(idx, minlength=n * n + 1)[: n * n].view(n, n)

    def all_reduce(self, fn: ReduceFn | None = None) -> None:
        """Sum the matrix over ranks (``fn`` e.g. ``RunContext.all_reduce_sum``; default torch.distributed)."""
        self.mat = _reduce_(self.mat, fn)

    def merge(self, other: ConfusionMatrix) -> None:
        """Add another meter's counts (same number of classes)."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes}-class matrix into {self.num_classes}-class one")
        self.mat += other.mat.to(self.mat.device)

    def reset(self) -> None:
        self.mat.zero_()

    def compute(self) -> dict[str, float | list[float]]:
        """``miou`` over classes present (in target or prediction), per-class ``iou`` (nan if absent),
        ``pixel_acc``. All nan when nothing was counted."""
        m = self.mat.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        present = union > 0
        iou = torch.where(present, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
        total = m.sum()
        return {
            "miou": float(iou[present].mean()) if bool(present.any()) else math.nan,
            "iou": [float(v) for v in iou.cpu()],
            "pixel_acc": float(tp.sum() / total) if total > 0 else math.nan,
        }


# ----------------------------------------------------------------------------- pure uncertainty functions

def entropy(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Shannon entropy (nats) of class probabilities along ``dim``; 0 * log 0 = 0."""
    return -torch.special.xlogy(probs, probs).sum(dim)


def _ece_bins(conf: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Bin index of each confidence: equal-width bins (i/n, (i+1)/n], confidence 0 in the first."""
    return (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)


def ece(conf: torch.Tensor, correct: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error: sum over equal-width confidence bins of |accuracy - confidence| * share."""
    conf = conf.reshape(-1).double()
    correct = correct.reshape(-1).double()
    if conf.numel() == 0:
        return math.nan
    idx = _ece_bins(conf, n_bins)
    count = torch.bincount(idx, minlength=n_bins).double()
    gap = (torch.bincount(idx, weights=correct, minlength=n_bins) - torch.bincount(idx, weights=conf, minlength=n_bins))
    return float(gap.abs().sum() / count.sum())


def pavpu_counts(
    correct: torch.Tensor,
    uncertainty: torch.Tensor,
    unc_threshold: float,
    patch: int = 4,
    acc_threshold: float = 0.5,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Patch counts ``[n_ac, n_au, n_ic, n_iu]`` (accurate/inaccurate x certain/uncertain) for maps B x H x W.

    Maps are cut into ``patch`` x ``patch`` tiles (the border tiles are partial). Within a tile only valid pixels
    count: accuracy = correct/valid, uncertainty = mean over valid; tiles with no valid pixel are skipped.
    A tile is accurate if accuracy >= ``acc_threshold`` and certain if uncertainty < ``unc_threshold``.
    """
    if correct.dim() == 2:
        correct, uncertainty = correct[None], uncertainty[None]
        valid = None if valid is None else valid[None]
    if valid is None:
        valid = torch.ones_like(correct, dtype=torch.bool)
    h, w = correct.shape[-2:]
    pad = (0, (-w) % patch, 0, (-h) % patch)
    v = F.pad(valid.double()[:, None], pad)
    c = F.pad((correct.bool() & valid).double()[:, None], pad)
    u = F.pad(torch.where(valid, uncertainty.double(), 0.0)[:, None], pad)
    n_valid = F.avg_pool2d(v, patch, divisor_override=1).flatten()
    n_correct = F.avg_pool2d(c, patch, divisor_override=1).flatten()
    u_sum = F.avg_pool2d(u, patch, divisor_override=1).flatten()
    has = n_valid > 0
    accurate = n_correct[has] >= acc_threshold * n_valid[has]
    certain = u_sum[has] < unc_threshold * n_valid[has]
    counts = [(accurate & certain).sum(), (accurate & ~certain).sum(), (~accurate & certain).sum()]
    return torch.stack([*counts, (~accurate & ~certain).sum()]).long()


def _pavpu_from_counts(counts: torch.Tensor) -> float:
    total = int(counts.sum())
    return float(counts[0] + counts[3]) / total if total else math.nan


def pavpu(
    correct: torch.Tensor,
    uncertainty: torch.Tensor,
    unc_threshold: float,
    patch: int = 4,
    acc_threshold: float = 0.5,
    valid: torch.Tensor | None = None,
) -> float:
    """Patch accuracy vs patch uncertainty (Mukhoti & Gal): (n_ac + n_iu) / (n_ac + n_au + n_ic + n_iu)."""
    return _pavpu_from_counts(pavpu_counts(correct, uncertainty, unc_threshold, patch, acc_threshold, valid))


def error_auroc(uncertainty: torch.Tensor, error: torch.Tensor) -> float:
    """Exact AUROC of ``uncertainty`` as a score for ``error`` (Mann-Whitney U with tied ranks averaged).

    1 = every error is more uncertain than every correct pixel, 0.5 = uninformative; nan if either class is empty.
    """
    u = uncertainty.reshape(-1).double()
    e = error.reshape(-1).bool()
    n_pos = int(e.sum())
    n_neg = e.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    sorted_u, order = torch.sort(u)
    _, counts = torch.unique_consecutive(sorted_u, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg_rank = torch.repeat_interleave(ends - (counts.double() - 1) / 2, counts)  # 1-based mean rank per tie group
    ranks = torch.empty_like(avg_rank)
    ranks[order] = avg_rank
    u_stat = ranks[e].sum() - n_pos * (n_pos + 1) / 2
    return float(u_stat / (n_pos * n_neg))


def _auroc_from_hists(h_err: torch.Tensor, h_ok: torch.Tensor) -> float:
    """Binned AUROC: P(u_err > u_ok) + 0.5 P(same bin), from histograms over the same ordered bins."""
    h_err, h_ok = h_err.double(), h_ok.double()
    n_err, n_ok = h_err.sum(), h_ok.sum()
    if n_err == 0 or n_ok == 0:
        return math.nan
    ok_below = torch.cumsum(h_ok, 0) - h_ok
    return float((h_err * (ok_below + 0.5 * h_ok)).sum() / (n_err * n_ok))


# ----------------------------------------------------------------------------- streaming uncertainty meter

class UncertaintyMeter:
    """Streaming ECE, PAvPU and error AUROC from mean predictive probabilities, with summable state.

    - Uncertainty is the entropy (nats) of the probabilities. ``unc_threshold`` (PAvPU) defaults to
      0.5 * ln(C), half the maximum entropy, so the default means the same thing for any class count.
    - ECE: ``n_bins`` equal-width confidence bins (confidence = max probability).
    - err_auroc is a binned estimate: entropy / ln(C) is mapped by t = log1p(x/s) / log1p(1/s) (s = 1e-8, monotone,
      so the AUROC is unchanged in the limit) and histogrammed into ``auroc_bins`` equal-width bins of t, giving
      fine resolution near zero entropy where confident pixels cluster. Pairs in the same bin count one half.
    """

    _AUROC_SCALE = 1e-8

    def __init__(
        self,
        num_classes: int,
        n_bins: int = 15,
        patch: int = 4,
        unc_threshold: float | None = None,
        acc_threshold: float = 0.5,
        auroc_bins: int = 2048,
        ignore_index: int = IGNORE,
        device: torch.device | str = "cpu",
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if n_bins < 1 or auroc_bins < 1 or patch < 1:
            raise ValueError("n_bins, auroc_bins and patch must be >= 1")
        self.num_classes = num_classes
        self.n_bins = n_bins
        self.patch = patch
        self.max_entropy = math.log(num_classes)
        self.unc_threshold = 0.5 * self.max_entropy if unc_threshold is None else float(unc_threshold)
        self.acc_threshold = acc_threshold
        self.auroc_bins = auroc_bins
        self.ignore_index = ignore_index
        self.reset(device)

    def _config(self) -> tuple:
        return (self.num_classes, self.n_bins, self.patch, self.unc_threshold, self.acc_threshold, self.auroc_bins)

    def reset(self, device: torch.device | str | None = None) -> None:
        """Zero the state (on ``device``, default: where it is): ECE bins (count, confidence sum, correct count),
        PAvPU counts, AUROC histograms."""
        if device is None:
            device = self.hist_ok.device if hasattr(self, "hist_ok") else "cpu"
        self.ece_count = torch.zeros(self.n_bins, dtype=torch.float64, device=device)
        self.ece_conf = torch.zeros(self.n_bins, dtype=torch.float64, device=device)
        self.ece_correct = torch.zeros(self.n_bins, dtype=torch.float64, device=device)
        self.pavpu_counts = torch.zeros(4, dtype=torch.int64, device=device)
        self.hist_err = torch.zeros(self.auroc_bins, dtype=torch.float64, device=device)
        self.hist_ok = torch.zeros(self.auroc_bins, dtype=torch.float64, device=device)

    def _state_names(self) -> list[str]:
        return ["ece_count", "ece_conf", "ece_correct", "pavpu_counts", "hist_err", "hist_ok"]

    def _auroc_bin(self, unc: torch.Tensor) -> torch.Tensor:
        s = self._AUROC_SCALE
        x = (unc.double() / self.max_entropy).clamp(0.0, 1.0)
        t = torch.log1p(x / s) / math.log1p(1.0 / s)
        return (t * self.auroc_bins).long().clamp(0, self.auroc_bins - 1)

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``probs`` B x C x H x W class probabilities, ``target`` B x H x W (254/255 skipped)."""
        if probs.dim() != 4 or probs.shape[1] != self.num_classes:
            raise ValueError(f"probs must be B x {self.num_classes} x H x W, got {tuple(probs.shape)}")
        if target.shape != (probs.shape[0], *probs.shape[2:]):
            raise ValueError(f"target shape {tuple(target.shape)} does not match probs {tuple(probs.shape)}")
        if self.hist_ok.device != probs.device:
            for name in self._state_names():
                setattr(self, name, getattr(self, name).to(probs.device))
        probs = probs.float()
        conf, pred = probs.max(1)
        unc = entropy(probs, 1)
        valid = _valid_mask(target, self.ignore_index)
        correct = (pred == target) & valid

        # skipped pixels land in one extra bin per histogram that is dropped (no boolean indexing)
        c, ok, v = conf.reshape(-1).double(), correct.reshape(-1).double(), valid.reshape(-1)
        nb = self.n_bins
        idx = torch.where(v, _ece_bins(c, nb), nb)
        self.ece_count += torch.bincount(idx, minlength=nb + 1)[:nb]
        self.ece_conf += torch.bincount(idx, weights=c, minlength=nb + 1)[:nb]
        self.ece_correct += torch.bincount(idx, weights=ok, minlength=nb + 1)[:nb]

        self.pavpu_counts += pavpu_counts(correct, unc, self.unc_threshold, self.patch, self.acc_threshold, valid)

        na = self.auroc_bins
        b = torch.where(v, self._auroc_bin(unc.reshape(-1)), na)
        self.hist_ok += torch.bincount(b, weights=ok, minlength=na + 1)[:na]
        self.hist_err += torch.bincount(b, weights=1.0 - ok, minlength=na + 1)[:na]

    def all_reduce(self, fn: ReduceFn | None = None) -> None:
        """Sum every state tensor over ranks (``fn`` e.g. ``RunContext.all_reduce_sum``; default torch.distributed)."""
        for name in self._state_names():
            setattr(self, name, _reduce_(getattr(self, name), fn))

    def merge(self, other: UncertaintyMeter) -> None:
        """Add another meter's state (it must use the same settings)."""
        if other._config() != self._config():
            raise ValueError(f"cannot merge meters with different settings: {other._config()} vs {self._config()}")
        for name in self._state_names():
            getattr(self, name).add_(getattr(other, name).to(getattr(self, name).device))

    def compute(self) -> dict[str, float]:
        """``ece``, ``pavpu`` and ``err_auroc`` (nan when undefined, e.g. no errors for the AUROC)."""
        n = self.ece_count.sum()
        ece_val = float((self.ece_correct - self.ece_conf).abs().sum() / n) if n > 0 else math.nan
        return {
            "ece": ece_val,
            "pavpu": _pavpu_from_counts(self.pavpu_counts),
            "err_auroc": _auroc_from_hists(self.hist_err, self.hist_ok),
        }
