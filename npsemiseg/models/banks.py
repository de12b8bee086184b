"""Per-class FIFO memory banks of latent rows (docs/method.md §3), vectorised, held as buffers.

A bank keeps, for each of C classes, a ring of at most K rows of L-dim vectors, a write pointer and a fill count,
plus the per-class centres (mean of the stored rows; zero for an empty class). All are registered buffers, so
they are in ``state_dict`` (checkpoints, export) and move with ``.to(device)``. Writes are one sort + one scatter:
no Python loop over classes.

Row selection (``gather_rows``) turns a B x L x h x w query and B x h x w labels into one row per labelled pixel
(intended design) or reproduces the released code's scrambled gather (``released=True``).
"""
from __future__ import annotations

import torch
from torch import nn


def _class_ranks(labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stable sort by class: (order, rank of each sorted row within its class, per-class counts)."""
    sorted_labels, order = torch.sort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    ranks = torch.arange(labels.numel(), device=labels.device) - starts[sorted_labels]
    return order, ranks, counts


@torch.no_grad()
def subsample_per_class(rows: torch.Tensor, labels: torch.Tensor, k: int, num_classes: int,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep at most ``k`` random rows of each class (all when k <= 0), preserving the rows' original order."""
    if k <= 0 or labels.numel() == 0:
        return rows, labels
    perm = torch.randperm(labels.numel(), device=labels.device, generator=generator)
    order, ranks, _ = _class_ranks(labels[perm], num_classes)
    keep = perm[order[ranks < k]].sort().values
    return rows[keep], labels[keep]


@torch.no_grad()
def gather_rows(query: torch.Tensor, labels: torch.Tensor, num_classes: int, released: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Bank rows (N x L) and their classes (N) from a query (B x L x h x w) and labels (B x h x w).

    Pixels labelled 254/255 (or outside 0..C-1) are dropped. Intended: one row per pixel (channels last, then
    mask). Released: the query's elements of each class, flattened in (batch, channel, pixel) order and cut into
    rows of L, so a "row" is L consecutive pixels of one channel (the released code's bug, kept for comparison).
    """
    b, dim, h, w = query.shape
    if labels.shape != (b, h, w):
        raise ValueError(f"labels {tuple(labels.shape)} must match query {(b, h, w)} (downsample them first)")
    labels = labels.to(query.device).long()
    if not released:
        valid = (labels >= 0) & (labels < num_classes)
        return query.permute(0, 2, 3, 1)[valid], labels[valid]  # one gather from the channels-last view
    lab = labels[:, None].expand(b, dim, h, w).reshape(-1)
    vals = query.reshape(-1)
    valid = (lab >= 0) & (lab < num_classes)
    lab, vals = lab[valid], vals[valid]
    sorted_lab, order = torch.sort(lab, stable=True)  # each class's elements stay in C order
    return vals[order].view(-1, dim), sorted_lab[::dim].clone()


class MemoryBank(nn.Module):
    """C per-class FIFO rings of K x L rows, with pointers, counts and centres as buffers."""

    def __init__(self, num_classes: int, capacity: int, dim: int) -> None:
        super().__init__()
        self.num_classes, self.capacity, self.dim = num_classes, capacity, dim
        self.register_buffer("rows", torch.zeros(num_classes, capacity, dim))
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("centres", torch.zeros(num_classes, dim))

    @property
    def empty(self) -> bool:
        return int(self.count.sum()) == 0

    @torch.no_grad()
    def push(self, rows: torch.Tensor, labels: torch.Tensor) -> None:
        """Append rows to their classes' rings (oldest evicted first), then recompute the centres.

        Equal to writing the rows one by one in order; when a class receives more than K rows only its last K
        survive.
        """
        labels = labels.to(self.rows.device).long()
        rows = rows.to(self.rows)
        keep = (labels >= 0) & (labels < self.num_classes)
        if not bool(keep.all()):
            rows, labels = rows[keep], labels[keep]
        if labels.numel():
            k = self.capacity
            order, sorted_ranks, counts = _class_ranks(labels, self.num_classes)
            ranks = torch.empty_like(sorted_ranks)
            ranks[order] = sorted_ranks  # arrival index of each row within its class
            slot = labels * k + (self.ptr[labels] + ranks) % k  # flat ring position: row i -> (ptr + i) % K
            survive = ranks >= (counts[labels] - k)  # a class keeps only its last K rows of this push
            if not bool(survive.all()):
                rows, slot = rows[survive], slot[survive]
            self.rows.view(-1, self.dim).index_copy_(0, slot, rows)
            self.ptr.copy_((self.ptr + counts) % k)
            self.count.copy_(torch.clamp(self.count + counts, max=k))
        self.recompute_centres()

    @torch.no_grad()
    def recompute_centres(self) -> None:
        """centres[c] = mean of the count[c] stored rows of class c (zero when empty)."""
        # slots at or past count[c] were never written (rings fill in order from slot 0), so they hold zeros
        total = self.rows.sum(1)
        self.centres.copy_(total / self.count.clamp(min=1)[:, None].to(total.dtype))

    @torch.no_grad()
    def copy_(self, other: MemoryBank) -> None:
        """Make this bank an exact copy of ``other`` (same shapes)."""
        for name in ("rows", "ptr", "count", "centres"):
            getattr(self, name).copy_(getattr(other, name))

    @torch.no_grad()
    def clear_(self) -> None:
        """Empty the bank (all rows zero: recompute_centres relies on unwritten slots being zero)."""
        for name in ("rows", "ptr", "count", "centres"):
            getattr(self, name).zero_()
