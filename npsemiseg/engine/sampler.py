"""A resumable, rank-sharded sampler: per-epoch permutation from (seed, epoch), start index for mid-epoch resume.

Every rank builds the same global order for an epoch (concatenated permutations of the dataset when the epoch is
longer than the dataset, which is how the small labelled list is oversampled), takes positions
``rank, rank + world_size, ...`` of it, and skips the first ``start`` of its own samples. The loop stores
(epoch, batches consumed) in the checkpoint, so a resumed run draws exactly the samples the straight run would.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Yields ``num_samples`` dataset indices per rank per epoch."""

    def __init__(
        self,
        dataset_len: int,
        num_samples: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if dataset_len < 1:
            raise ValueError("ResumableSampler: empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"ResumableSampler: rank {rank} not in [0, {world_size})")
        self.dataset_len = dataset_len
        self.num_samples = num_samples
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation and skip this rank's first ``start`` samples."""
        self.epoch = int(epoch)
        self.start = int(start)

    def global_order(self) -> torch.Tensor:
        """The epoch's order for all ranks: length num_samples * world_size."""
        total = self.num_samples * self.world_size
        reps = -(-total // self.dataset_len)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed * 1_000_003 + self.epoch)
            parts = [torch.randperm(self.dataset_len, generator=g) for _ in range(reps)]
        else:
            parts = [torch.arange(self.dataset_len)] * reps
        return torch.cat(parts)[:total]

    def __iter__(self) -> Iterator[int]:
        mine = self.global_order()[self.rank :: self.world_size]
        return iter(mine[self.start :].tolist())

    def __len__(self) -> int:
        return max(self.num_samples - self.start, 0)


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """Evaluation shard: indices rank, rank + world_size, ... (no padding, so no image is counted twice)."""
    return list(range(rank, n, world_size))
