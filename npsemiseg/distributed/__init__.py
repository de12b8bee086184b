"""Ray Train (V2) data-parallel training around the one NP-SemiSeg loop.

- ``context.RayContext``: the RunContext inside a worker (DDP, bank all-gather, reports, resume, faults).
- ``trainer.build_trainer`` / ``trainer.train_loop_per_worker``: the TorchTrainer factory and worker entry.
- ``launch.run_distributed``: what ``npsemiseg train --num-workers N`` (``cli.py``) calls on the driver.
- ``connect.connect``: the one policy for joining or starting Ray (train and sweeps).

Names are resolved lazily so ``import npsemiseg.distributed`` does not import Ray.
"""
from __future__ import annotations

from typing import Any

_EXPORTS = {
    "RayContext": "npsemiseg.distributed.context",
    "build_trainer": "npsemiseg.distributed.trainer",
    "train_loop_per_worker": "npsemiseg.distributed.trainer",
    "ReportLog": "npsemiseg.distributed.trainer",
    "run_distributed": "npsemiseg.distributed.launch",
    "connect": "npsemiseg.distributed.connect",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'npsemiseg.distributed' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
