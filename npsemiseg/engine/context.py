"""RunContext: the seam between the one training loop and whatever runs it.

The loop (``npsemiseg.engine.loop.fit``) never imports Ray. It asks its context for the device, its rank and the
world size (the loop's ``ResumableSampler`` and the evaluation shards use them), to wrap the model for data
parallelism, to all-gather memory-bank rows, to all-reduce confusion matrices, to report metrics + checkpoints and
to hand back a checkpoint to resume from. ``LocalContext`` is the single-process implementation;
``npsemiseg.distributed`` provides the Ray Train one.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from npsemiseg.config import Config


def use_sync_bn(cfg: Config, device: torch.device, world_size: int) -> bool:
    """SyncBatchNorm only when asked for (``train.sync_bn``), on CUDA, with more than one rank (no CPU kernel).

    The one place this is decided: ``engine.step.build_state`` converts the student before the teacher is copied
    from it, so both carry SyncBN and their checkpoints keep BatchNorm's state-dict keys.
    """
    return bool(cfg.train.sync_bn) and device.type == "cuda" and world_size > 1


class RunContext:
    """Single-process defaults; subclasses override what differs under data parallelism."""

    rank: int = 0
    world_size: int = 1

    def __init__(self, device: str = "auto") -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """Wrap the student for data parallelism (DDP). Identity here."""
        return model

    def all_gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Concatenate along dim 0 the (possibly different-length) tensors of every rank, rank order."""
        return rows

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks in place and return it."""
        return tensor

    def report(self, metrics: dict[str, Any], checkpoint: dict[str, Any] | None = None) -> None:
        """Publish metrics (and optionally a full-state checkpoint dict) for this step."""

    def resume_state(self) -> dict[str, Any] | None:
        """The latest full-state checkpoint dict to resume from, or None to start fresh."""
        return None


class LocalContext(RunContext):
    """Plain single-process run: checkpoints go to ``out_dir/checkpoints/`` (``last.pt``, and ``best.pt`` when
    the report's step is the best evaluation so far), resume from ``last.pt``."""

    def __init__(self, out_dir: str | Path, device: str = "auto", resume: bool = True) -> None:
        super().__init__(device)
        self.out_dir = Path(out_dir)
        self.resume = resume
        self.reports: list[dict[str, Any]] = []

    def report(self, metrics: dict[str, Any], checkpoint: dict[str, Any] | None = None) -> None:
        from npsemiseg.engine.checkpoint import save_checkpoint

        self.reports.append(dict(metrics))
        if checkpoint is not None:
            save_checkpoint(checkpoint, self.out_dir / "checkpoints" / "last.pt")
            if metrics.get("val/best_step", -1) == metrics.get("step"):
                save_checkpoint(checkpoint, self.out_dir / "checkpoints" / "best.pt")

    def resume_state(self) -> dict[str, Any] | None:
        from npsemiseg.engine.checkpoint import load_checkpoint

        path = self.out_dir / "checkpoints" / "last.pt"
        if self.resume and path.is_file():
            return load_checkpoint(path)
        return None
