"""Data layer: VOC/SBD, Cityscapes and list-file readers, split protocols, transforms, synthetic data.

Entry points: ``build_datasets(cfg) -> TrainData`` (``build.py``), ``make_demo_data`` (``synthetic.py``),
``convert_trainids`` (``cityscapes.py``), ``seed_worker`` / ``loader_seed_kwargs`` (``seeding.py``).
Names are imported lazily, so the CLI's data commands (and ``npsemiseg --help``) need not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainData": "build", "build_datasets": "build", "convert_trainids": "cityscapes", "DataError": "io",
    "IGNORE": "labels", "NUM_CLASSES": "labels", "PAD": "labels", "loader_seed_kwargs": "seeding",
    "make_generator": "seeding", "seed_worker": "seeding", "PROTOCOLS": "splits", "SplitInfo": "splits",
    "get_protocol": "splits", "make_demo_data": "synthetic",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
