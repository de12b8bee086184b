"""Training-time logging: TensorBoard event files under ``out_dir/tb`` and a tqdm progress bar (rank 0 only).

Metric names are the ones the reports use (``train/loss``, ``val/miou``...), so TensorBoard, Ray reports and the
results table agree.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any


class MetricLogger:
    """Writes scalar metrics to TensorBoard and shows a progress bar; a no-op on ranks other than 0."""

    def __init__(self, out_dir: str | Path, total: int, initial: int = 0, enabled: bool = True,
                 progress: bool | None = None) -> None:
        self.enabled = enabled
        self.writer = None
        self.bar = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter  # imported lazily: tensorboard is slow to import
        from tqdm import tqdm

        self.writer = SummaryWriter(log_dir=str(Path(out_dir) / "tb"))
        show = sys.stderr.isatty() if progress is None else progress
        self.bar = tqdm(total=total, initial=initial, disable=not show, dynamic_ncols=True, desc="train")

    @property
    def shows_bar(self) -> bool:
        """True when a live progress bar is on screen (else the loop prints log lines instead)."""
        return self.bar is not None and not self.bar.disable

    def scalars(self, step: int, metrics: dict[str, Any]) -> None:
        """Log every finite numeric value under its own name."""
        if self.writer is None:
            return
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and "/" in k:
                self.writer.add_scalar(k, v, global_step=step)

    def advance(self, n: int = 1, postfix: dict[str, float] | None = None) -> None:
        """Move the progress bar by ``n`` steps and show a few values."""
        if self.bar is None:
            return
        self.bar.update(n)
        if postfix:
            self.bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
