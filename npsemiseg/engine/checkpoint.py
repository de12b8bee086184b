"""Full-state checkpoints: atomic save, ``weights_only=True`` load, RNG states as tensors/lists.

Checkpoint dict (docs/CONTRACTS.md): ``model``, ``teacher``, ``optimizer``, ``scheduler``, ``step``, ``epoch``,
``sampler`` ({"epoch", "index"}), ``rng``, ``config`` (nested dict), ``metrics``, ``best_miou`` (+ ``scaler``
when AMP is on). Everything is tensors and primitives, so ``torch.load(path, weights_only=True)`` reads it.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from npsemiseg.errors import UserError, one_line
from npsemiseg.fileio import atomic_path

CHECKPOINT_KEYS = ("model", "teacher", "optimizer", "scheduler", "step", "epoch", "sampler", "rng", "config")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to a temp file in the same folder, then rename over ``path`` (never half-written)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a checkpoint dict atomically."""
    return atomic_torch_save(state, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; UserError naming the file when missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickle with objects, random bytes...
        raise UserError(f"{path}: not a readable checkpoint ({one_line(e).strip()[:200]})") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"{path}: not a checkpoint dict")
    return ckpt


def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as tensors/lists (weights_only-loadable)."""
    version, py_state, gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    rng: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    py = rng["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    nps = rng["numpy"]
    np.random.set_state(
        ("MT19937", nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"], nps["gauss"])
    )
    torch.set_rng_state(rng["torch"].cpu())
    if "cuda" in rng and torch.cuda.is_available():
        states = [s.cpu() for s in rng["cuda"]][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)


def seed_everything(seed: int) -> None:
    """One seed for Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)

