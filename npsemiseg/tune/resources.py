"""Per-trial resources: what one sweep trial asks the cluster for, checked before any trial starts.

A trial is a small driver function (a sliver of CPU, never 0: Tune rejects ``{"CPU": 0}``) that starts a Ray Train
run of ``workers`` ranks. GPUs per trial may be fractional so several trials share a GPU, but the ranks of one
trial never share a GPU (NCCL refuses two ranks on one device), so a fraction requires one worker.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from npsemiseg.errors import UserError

# What one trial of the real (GPU) recipe requests by default; cluster/gpu.yaml must offer it on some node type.
DEFAULT_GPU_TRIAL_RESOURCES = {"CPU": 8, "GPU": 1}
# CPU reserved by the trial's own driver function (the Train workers get the real cores).
TRIAL_DRIVER_CPU = 0.01


@dataclass(frozen=True)
class TrialResources:
    """Workers per trial and what each worker reserves."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_trial: float = 0.0

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UserError(f"--workers-per-trial: must be >= 1, got {self.workers}")
        if self.cpus_per_worker <= 0:
            raise UserError(f"--cpus-per-worker: must be > 0, got {self.cpus_per_worker}")
        if self.gpus_per_trial < 0:
            raise UserError(f"--gpus-per-trial: must be >= 0, got {self.gpus_per_trial}")
        per = self.gpus_per_worker
        if 0 < per < 1 and self.workers > 1:
            raise UserError(
                f"--gpus-per-trial: {self.gpus_per_trial} GPU for {self.workers} workers would put several ranks of "
                "one trial on one GPU (NCCL refuses that); use a fraction only with --workers-per-trial 1"
            )
        if per > 1 and not float(per).is_integer():
            raise UserError(
                f"--gpus-per-trial: {self.gpus_per_trial} GPUs do not split evenly over {self.workers} workers"
            )

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_trial > 0

    @property
    def gpus_per_worker(self) -> float:
        return self.gpus_per_trial / self.workers

    def per_worker(self) -> dict[str, float]:
        """``resources_per_worker`` for the Train ``ScalingConfig``."""
        res = {"CPU": float(self.cpus_per_worker)}
        if self.use_gpu:
            res["GPU"] = self.gpus_per_worker
        return res

    def per_trial(self) -> dict[str, float]:
        """Everything one running trial holds (driver sliver + all workers)."""
        res = {"CPU": TRIAL_DRIVER_CPU + self.workers * self.cpus_per_worker}
        if self.use_gpu:
            res["GPU"] = self.gpus_per_trial
        return res

    def fits(self, cluster: dict[str, float]) -> int:
        """How many trials of this size fit at once in ``cluster`` (``ray.cluster_resources()``)."""
        need = self.per_trial()
        return int(min(cluster.get(k, 0.0) // v if v > 0 else 1e9 for k, v in need.items()))

    def describe(self) -> str:
        gpu = f", {self.gpus_per_trial:g} GPU" if self.use_gpu else ""
        return f"{self.workers} worker(s) x {self.cpus_per_worker:g} CPU{gpu} per trial"


def local_cpus(num_cpus: int, max_concurrent: int) -> int:
    """Logical CPUs for a local Ray instance meant to run ``max_concurrent`` trials on ``num_cpus`` cores: one
    more per 100 trial drivers, so the drivers' slivers (``TRIAL_DRIVER_CPU``) never take a worker's core
    (``--num-cpus 2 --max-concurrent 2`` would otherwise run one trial while the second waits for its worker)."""
    return num_cpus + math.ceil(max_concurrent * TRIAL_DRIVER_CPU)
