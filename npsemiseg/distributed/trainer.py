"""Ray Train (V2) wiring: the per-worker function around the one loop, and the ``TorchTrainer`` factory.

    trainer = build_trainer(cfg, num_workers=2, use_gpu=False, storage_path="/tmp/ray_runs", name="demo")
    result = trainer.fit()          # result.metrics["val/miou"], result.checkpoint, result.best_checkpoints

Each worker rebuilds the Config from a plain dict, makes a ``RayContext`` and calls ``engine.loop.fit``; the
loop itself never imports Ray. The Tune layer calls ``build_trainer`` from its trial function. Comments ``# [n]``
mark what Ray adds around the plain loop (as Ray's own examples do).
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# [1] Ray Train V2: run configuration objects, the controller-side callback hook, the Torch trainer.
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchConfig, TorchTrainer

from npsemiseg.config import Config, apply_overrides, config_from_dict
from npsemiseg.distributed.context import RayContext, choose_backend, fail_at_step_from_env
from npsemiseg.distributed.tbsync import tensorboard_mirror
from npsemiseg.errors import UserError, one_line

SCORE_ATTRIBUTE = "val/miou"


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker entry: Config from ``config["cfg"]``, a RayContext, then ``engine.loop.fit``.

    Returns fit's final metrics (Ray hands rank 0's return value back as ``Result.return_value``).
    """
    from npsemiseg.engine.loop import fit

    cfg = config_from_dict(config["cfg"])
    # [2] The only Ray object the loop sees: a RunContext for this rank (DDP, bank all-gather, ray.train.report of
    #     metrics + checkpoints, resume from ray.train.get_checkpoint). The rest is the single-process loop.
    ctx = RayContext(cfg, fail_at_step=int(config.get("fail_at_step", -1)))
    with tensorboard_mirror(config.get("tensorboard_uri"), cfg.out_dir, ctx.rank):  # rank 0's events -> storage
        return dict(fit(cfg, ctx) or {})


LOCAL_PATH_KEYS = ("out_dir", "data.root", "data.split_dir", "data.labelled_list", "data.unlabelled_list",
                   "data.val_list", "model.pretrained")


def absolute_paths(cfg: Config) -> Config:
    """Resolve relative local paths against the driver's working directory.

    Ray Train workers run in a Ray session directory, so ``demo_data/voc`` would not be found there. Empty values,
    absolute paths, URIs and ``model.pretrained=torchvision`` are left alone.
    """
    over: dict[str, str] = {}
    for key in LOCAL_PATH_KEYS:
        section, _, name = key.rpartition(".")
        value = getattr(getattr(cfg, section) if section else cfg, name)
        if not value or os.path.isabs(value) or "://" in value or value == "torchvision":
            continue
        over[key] = str(Path(value).expanduser().resolve())
    return apply_overrides(cfg, over) if over else cfg


def _storage(storage_path: str | None) -> str | None:
    """Local paths become absolute (Ray requires it); URIs (s3://, gs://, ...) pass through untouched."""
    if storage_path is None or "://" in storage_path:
        return storage_path
    return str(Path(storage_path).expanduser().resolve())


def build_trainer(
    cfg: Config,
    *,
    num_workers: int,
    use_gpu: bool,
    storage_path: str | None,
    name: str,
    callbacks: Sequence[UserCallback] = (),
    max_failures: int = 0,
    resources_per_worker: dict[str, float] | None = None,
    num_to_keep: int | None = 2,
    train_fn: Callable[[dict[str, Any]], Any] = train_loop_per_worker,
    tensorboard_uri: str | None = None,
) -> TorchTrainer:
    """A ``TorchTrainer`` that runs ``train_fn`` (default: the NP-SemiSeg loop) on ``num_workers`` ranks.

    Backend nccl with GPUs, gloo without. Checkpoints go to ``storage_path/name`` (a local dir, an NFS mount or
    an object-store URI); at most ``num_to_keep`` are kept, the best by ``val/miou`` plus always the latest.
    ``max_failures`` restarts the worker group from the latest checkpoint after a worker error or a node
    preemption (one budget for both: Train V2 otherwise retries preemptions forever; -1 = forever).
    ``tensorboard_uri``: rank 0 mirrors ``<out_dir>/tb`` there (a trial's storage folder on a cluster).
    Rerunning with the same ``storage_path`` and ``name`` resumes that run from its latest checkpoint.
    ``NPSEMISEG_FAIL_AT_STEP`` (tests only) is read here and handed to the workers with the config.
    """
    if num_workers < 1:
        raise UserError(f"--num-workers: must be >= 1, got {num_workers}")
    if use_gpu and cfg.device == "cpu":
        raise UserError("device: is 'cpu' but GPU workers were requested (--use-gpu); set device=auto or cuda")
    if not name.strip("/"):
        raise UserError(f"--name: run name must not be empty, got {name!r}")
    cfg = absolute_paths(cfg)
    loop_config: dict[str, Any] = {"cfg": cfg.to_dict()}
    fail_at_step = fail_at_step_from_env()
    if fail_at_step >= 0:
        loop_config["fail_at_step"] = fail_at_step
    if tensorboard_uri:
        loop_config["tensorboard_uri"] = tensorboard_uri
    # [3] How many ranks, on GPUs or not, with what resources each.
    scaling = ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources_per_worker)
    run = RunConfig(
        name=name,
        storage_path=_storage(storage_path),  # [4] run + checkpoints in storage_path/name: a rerun resumes there
        callbacks=list(callbacks),
        failure_config=FailureConfig(  # [5] restart the worker group on a failure or a node preemption
            max_failures=max_failures, max_preemption_failures=max_failures),  # one budget (V2: else forever)
        checkpoint_config=CheckpointConfig(  # [6] retention: the best num_to_keep by val/miou, plus the latest
            num_to_keep=num_to_keep, checkpoint_score_attribute=SCORE_ATTRIBUTE, checkpoint_score_order="max"
        ),
    )
    # [7] One TorchTrainer: Ray sets up torch.distributed (gloo/nccl) and runs train_fn(loop_config) on every rank.
    return TorchTrainer(
        train_fn,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend=choose_backend(use_gpu)),
        scaling_config=scaling,
        run_config=run,
    )


class ReportLog(UserCallback):  # [8] a controller-side hook on every report and every worker failure
    """Appends every report (rank 0's metrics, checkpoint path) and every worker failure to a JSON-lines file.

    Runs in the Ray Train controller, so ``path`` must be writable from the node that hosts it (the driver's
    node for a local run). Useful to audit a run after restarts: the ``step`` values must not skip or repeat.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)

    def _write(self, record: dict[str, Any]) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        record = {"event": "report", "time": time.time(), "metrics": metrics[0] if metrics else {}}
        record["checkpoint"] = checkpoint.path if checkpoint is not None else None
        self._write(record)

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        errors = {str(rank): one_line(err) for rank, err in worker_exceptions.items()}
        self._write({"event": "failure", "time": time.time(), "errors": errors})


def read_report_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records ``ReportLog`` wrote, in order."""
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
