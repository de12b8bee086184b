"""Seeding DataLoader workers from the config seed, so augmentations are reproducible run to run.

    loader = DataLoader(ds, batch_size=2, shuffle=True, **loader_seed_kwargs(cfg.seed, stream=0))

The generator fixes the shuffling order and each worker's torch seed (``base_seed + worker_id``);
``seed_worker`` then derives NumPy's and Python's seeds from it, so every library a transform might use agrees.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed NumPy and ``random`` from the worker's torch seed."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def make_generator(seed: int, stream: int = 0) -> torch.Generator:
    """A torch Generator for one loader; ``stream`` keeps several loaders (labelled, unlabelled) independent."""
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + int(stream) * 7919) % 2**63)
    return g


def loader_seed_kwargs(seed: int, stream: int = 0) -> dict[str, Any]:
    """``generator`` + ``worker_init_fn`` keyword arguments for ``torch.utils.data.DataLoader``."""
    return {"generator": make_generator(seed, stream), "worker_init_fn": seed_worker}
