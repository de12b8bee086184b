"""What a sweep trial runs in each Ray Train worker: the one training loop, with its training time measured.

``TimedContext`` adds ``time/train_s`` to every report: the seconds spent inside the training function so far,
carried in the checkpoint so that it keeps counting across restores and retries (GPU/CPU-hours in the results come
from it, not from the trial's wall time, which includes worker start-up and waiting for placement).
"""
from __future__ import annotations

import time
from typing import Any

from npsemiseg.config import config_from_dict
from npsemiseg.distributed.context import RayContext
from npsemiseg.distributed.tbsync import tensorboard_mirror
from npsemiseg.tune.common import TRAIN_TIME

CKPT_TRAIN_TIME = "train_time_s"  # checkpoint entry holding TRAIN_TIME at the moment it was saved


class TimedContext(RayContext):
    """``RayContext`` whose reports carry the training time, summed over the attempts of the run."""

    def __init__(self, cfg: Any, fail_at_step: int = -1) -> None:
        self._t0 = time.monotonic()
        self._before = 0.0  # training time of earlier attempts, from the checkpoint this one resumes
        super().__init__(cfg, fail_at_step=fail_at_step)

    def trained_s(self) -> float:
        return self._before + time.monotonic() - self._t0

    def resume_state(self) -> dict[str, Any] | None:
        state = super().resume_state()
        if state is not None:
            self._before = float(state.get(CKPT_TRAIN_TIME, 0.0))
        return state

    def report(self, metrics: dict[str, Any], checkpoint: dict[str, Any] | None = None) -> None:
        t = self.trained_s()
        if checkpoint is not None:
            checkpoint = {**checkpoint, CKPT_TRAIN_TIME: t}
        super().report({**metrics, TRAIN_TIME: t}, checkpoint)


def timed_train_loop(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker entry of sweep trials: the one loop (``engine.loop.fit``) with a ``TimedContext``."""
    from npsemiseg.engine.loop import fit

    cfg = config_from_dict(config["cfg"])
    ctx = TimedContext(cfg, fail_at_step=int(config.get("fail_at_step", -1)))
    with tensorboard_mirror(config.get("tensorboard_uri"), cfg.out_dir, ctx.rank):  # rank 0's events -> storage
        return dict(fit(cfg, ctx) or {})
