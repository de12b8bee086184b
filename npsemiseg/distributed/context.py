"""RayContext: the RunContext the one training loop gets when it runs inside a Ray Train worker.

It maps the loop's needs onto Ray Train V2 and ``torch.distributed``: rank/world size from
``ray.train.get_context()``, the worker's device, DDP via ``ray.train.torch.prepare_model`` (optionally with
SyncBatchNorm), variable-length all-gather for memory-bank rows, all-reduce for confusion matrices, metrics and
checkpoints through ``ray.train.report`` and resume through ``ray.train.get_checkpoint``. It also owns the fault
injection used by the tests (``NPSEMISEG_FAIL_AT_STEP``, see ``FaultInjector``). SyncBatchNorm is decided where the
model is built (``engine.context.use_sync_bn`` in ``engine.step.build_state``), not here.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from npsemiseg.config import Config
from npsemiseg.engine.checkpoint import load_checkpoint
from npsemiseg.engine.context import RunContext
from npsemiseg.errors import UserError

CHECKPOINT_FILE = "checkpoint.pt"
STATE_DICT_KEYS = ("model", "teacher")  # checkpoint entries that hold module state dicts
# Fault injection for tests (not a training setting): the step at which one rank raises once; read by
# ``fail_at_step_from_env`` on the driver (``trainer.build_trainer``), which hands it to the workers.
FAIL_AT_STEP_ENV = "NPSEMISEG_FAIL_AT_STEP"


def choose_backend(use_gpu: bool) -> str:
    """torch.distributed backend for the worker group: nccl for GPU workers, gloo for CPU workers."""
    return "nccl" if use_gpu else "gloo"


# DistributedDataParallel options. ``find_unused_parameters`` stays off: although the NP head's query path reads
# ``F.detach()``, every parameter still gets a gradient on every step (phi through the sampled latent and the KL
# term, the backbone through F into the decoder), for every head and mode; ``tests/test_distributed_unit.py``
# checks this, so DDP can skip the extra autograd-graph traversal that the flag costs each step.
DDP_KWARGS: dict[str, Any] = {"find_unused_parameters": False}


def strip_module_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """Drop a leading ``module.`` (DDP) from every key so the state loads into a plain model."""
    if not any(k.startswith("module.") for k in state):
        return state
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def clean_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A shallow copy of the checkpoint dict whose module state dicts carry no DDP prefix."""
    out = dict(checkpoint)
    for key in STATE_DICT_KEYS:
        if isinstance(out.get(key), dict):
            out[key] = strip_module_prefix(out[key])
    return out


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Ray refuses tensors in metrics: turn 0-d tensors and numpy scalars into Python numbers."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            v = v.item() if v.numel() == 1 else v.tolist()
        elif hasattr(v, "item") and not isinstance(v, (str, bytes)):
            v = v.item()
        out[k] = v
    return out


def fail_at_step_from_env() -> int:
    """``NPSEMISEG_FAIL_AT_STEP`` as a step (-1 = off when unset or empty)."""
    raw = os.environ.get(FAIL_AT_STEP_ENV, "").strip()
    if not raw:
        return -1
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"{FAIL_AT_STEP_ENV}: expected an integer step, got {raw!r}") from None


class FaultInjector:
    """``NPSEMISEG_FAIL_AT_STEP=S``: one rank raises once, at the first report with ``step >= S``.

    The marker file lives in the run's storage (local dir, NFS or object store, through the storage filesystem
    Ray Train uses) so the restarted worker group, possibly on another node, sees that the fault already
    happened; it falls back to ``cfg.out_dir`` when the storage context is not available.
    """

    def __init__(self, fail_at_step: int, rank: int, world_size: int, out_dir: str) -> None:
        self.fail_at_step = fail_at_step
        self.is_failing_rank = rank == world_size - 1  # a non-zero rank when there are several
        self.fs, self.path = self._marker_location(fail_at_step, out_dir)

    @staticmethod
    def _marker_location(step: int, out_dir: str) -> tuple[Any, str]:
        name = f"fault_injected_step{step}"
        try:
            import ray.train

            storage = ray.train.get_context().get_storage()
            return storage.storage_filesystem, f"{storage.experiment_fs_path}/{name}"
        except Exception:  # noqa: BLE001 - outside Ray Train or an older storage API: local fallback
            import pyarrow.fs

            return pyarrow.fs.LocalFileSystem(), str(Path(out_dir).resolve() / name)

    def already_fired(self) -> bool:
        import pyarrow.fs

        return self.fs.get_file_info(self.path).type != pyarrow.fs.FileType.NotFound

    def maybe_fail(self, step: int) -> None:
        """Raise ``RuntimeError`` once (per marker) when ``step`` reaches ``fail_at_step``."""
        if self.fail_at_step < 0 or step < self.fail_at_step or not self.is_failing_rank:
            return
        if self.already_fired():
            return
        parent = self.path.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        with self.fs.open_output_stream(self.path) as f:
            f.write(f"step={step} time={time.time():.3f}\n".encode())
        raise RuntimeError(f"fault injection: {FAIL_AT_STEP_ENV}={self.fail_at_step} reached at step {step}")


class RayContext(RunContext):
    """RunContext for a Ray Train worker (Train V2): one rank of a data-parallel run."""

    def __init__(self, cfg: Config, fail_at_step: int = -1) -> None:
        import ray.train
        import ray.train.torch

        tctx = ray.train.get_context()
        self.cfg = cfg
        self.rank = tctx.get_world_rank()
        self.world_size = tctx.get_world_size()
        self.local_rank = tctx.get_local_rank()
        if cfg.device != "cpu" and torch.cuda.is_available():
            device = ray.train.torch.get_device()
        else:
            device = torch.device("cpu")
        self.device = device
        self.distributed = self.world_size > 1 and dist.is_available() and dist.is_initialized()
        self.faults = FaultInjector(fail_at_step, self.rank, self.world_size, cfg.out_dir)
        self.reports: list[dict[str, Any]] = []

    # ----------------------------------------------------------------- model and data
    def wrap_model(self, model: nn.Module) -> nn.Module:
        """Move to the worker's device and, with several ranks, wrap in DDP.

        Memory-bank buffers of the NP head are excluded from DDP's buffer broadcast: the loop keeps them equal
        on every rank through ``all_gather_rows`` and broadcasting megabytes of banks each forward is waste.
        """
        import ray.train.torch

        if self.world_size > 1:
            ignore = _np_head_buffer_names(model)
            if ignore:
                torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignore)
        return ray.train.torch.prepare_model(
            model, move_to_device=self.device, parallel_strategy="ddp", parallel_strategy_kwargs=DDP_KWARGS
        )

    # ----------------------------------------------------------------- collectives
    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def all_gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``rows`` (N_r x ...) along dim 0 in rank order; N_r may differ per rank.

        Gathers the row counts, pads each tensor to the largest count, all-gathers, trims and concatenates.
        Works with gloo (CPU tensors) and nccl (CUDA tensors); the result is on ``rows.device``.
        """
        if not self.distributed:
            return rows
        comm = self._comm_device()
        local = rows.detach().to(comm).contiguous()
        count = torch.tensor([local.shape[0]], dtype=torch.int64, device=comm)
        counts = [torch.zeros_like(count) for _ in range(self.world_size)]
        dist.all_gather(counts, count)
        sizes = [int(c.item()) for c in counts]
        biggest = max(sizes)
        if biggest == 0:
            return rows.new_empty((0, *rows.shape[1:]))
        if local.shape[0] < biggest:
            pad = local.new_zeros((biggest - local.shape[0], *local.shape[1:]))
            local = torch.cat([local, pad], dim=0)
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        out = torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0)
        return out.to(rows.device)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks in place (through the comm device for nccl/gloo) and return it."""
        if not self.distributed:
            return tensor
        comm = self._comm_device()
        if tensor.device == comm:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            return tensor
        moved = tensor.to(comm)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        tensor.copy_(moved.to(tensor.device))
        return tensor

    # ----------------------------------------------------------------- reports and checkpoints
    def report(self, metrics: dict[str, Any], checkpoint: dict[str, Any] | None = None) -> None:
        """Publish metrics on every rank (Train V2 needs the same number of reports from each).

        With a checkpoint, rank 0 saves it (state dicts without ``module.``) as ``checkpoint.pt`` in a temp dir
        and hands it to Ray, which copies it to storage under ``checkpoint_step<N>_...``; other ranks report
        metrics only. Each rank's ``rng`` entry is gathered into ``rng_per_rank`` so a resumed run continues
        every rank's random streams, not rank 0's everywhere. Fault injection fires here, before the report, so
        the steps since the last checkpoint are re-run after the restart.
        """
        import ray.train

        metrics = scalar_metrics(metrics)
        step = int(metrics.get("step", -1))
        self.faults.maybe_fail(step)
        self.reports.append(dict(metrics))
        if checkpoint is None:
            ray.train.report(metrics)
            return
        name = f"checkpoint_step{max(step, 0):08d}_{time.strftime('%Y%m%d-%H%M%S')}"
        rngs = self._gather_rng(checkpoint.get("rng"))
        if self.rank != 0:
            ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
            return
        with tempfile.TemporaryDirectory(prefix="npss_ckpt_") as tmp:
            state = clean_checkpoint(checkpoint)
            if rngs is not None:
                state["rng_per_rank"] = rngs
            torch.save(state, os.path.join(tmp, CHECKPOINT_FILE))
            ray.train.report(
                metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name
            )

    def resume_state(self) -> dict[str, Any] | None:
        """The latest reported checkpoint (all ranks read the same one), read by ``engine.checkpoint``'s loader."""
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            state = load_checkpoint(Path(d) / CHECKPOINT_FILE)
        per_rank = state.get("rng_per_rank")
        if isinstance(per_rank, list) and len(per_rank) == self.world_size:
            state["rng"] = per_rank[self.rank]
        return state

    def _gather_rng(self, rng: Any) -> list[Any] | None:
        """Every rank's RNG snapshot on rank 0 (None elsewhere, or when there is nothing to gather)."""
        if not self.distributed or rng is None:
            return None
        out: list[Any] | None = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(rng, out, dst=0)
        return out


def _np_head_buffer_names(model: nn.Module) -> list[str]:
    """Fully qualified names of the NP head's buffers (memory banks, centres) in ``model``."""
    head = getattr(model, "np_head", None)
    if head is None:
        return []
    for prefix, module in model.named_modules():
        if module is head:
            return [f"{prefix}.{name}" if prefix else name for name, _ in head.named_buffers()]
    return []

