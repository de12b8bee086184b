"""Driver side of a data-parallel run: connect to (or start) Ray, fit a TorchTrainer, print the outcome.

    npsemiseg train --config configs/demo.yaml --num-workers 2 --storage-path /tmp/npss_runs

``npsemiseg train`` (distributed/cli.py) calls ``run_distributed`` when ``--num-workers`` > 1 or ``--ray``; Ray is
found or started by ``distributed.connect.connect`` (the policy the sweeps use too).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from npsemiseg.config import Config
from npsemiseg.errors import UserError, one_line


def user_error_in(exc: BaseException) -> UserError | None:
    """The UserError a worker raised, if one is behind a Ray Train failure (checked through causes)."""
    seen: list[BaseException] = []
    pending: list[BaseException] = [exc]
    failures = getattr(exc, "worker_failures", None) or {}
    pending.extend(failures.values())
    while pending:
        e = pending.pop(0)
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        if isinstance(e, UserError):  # prefer the original over Ray's RayTaskError-derived wrapper
            cause = getattr(e, "cause", None)
            return cause if isinstance(cause, UserError) else e
        pending.extend(c for c in (getattr(e, "cause", None), e.__cause__) if isinstance(c, BaseException))
    return None


def default_storage(cfg: Config) -> str:
    """Where checkpoints go when no ``--storage-path`` is given: ``<out_dir>/ray`` (local runs only)."""
    return str(Path(cfg.out_dir).resolve() / "ray")


def run_distributed(
    cfg: Config, num_workers: int, use_gpu: bool, storage_path: str | None, max_failures: int = 0
) -> dict[str, Any]:
    """Train ``cfg`` with Ray Train on ``num_workers`` ranks; returns the final metrics (rank 0's).

    The run lives in ``storage_path/cfg.name``; running the same command again resumes it from its latest
    checkpoint. Every report is also appended to ``<out_dir>/ray_reports.jsonl`` (see ``ReportLog``).
    """
    from ray.train import TrainingFailedError

    from npsemiseg.distributed.connect import connect
    from npsemiseg.distributed.trainer import ReportLog, build_trainer

    url = connect(join_local_cluster=True)
    if url:
        print(f"Ray dashboard: {url}", flush=True)
    storage = storage_path or default_storage(cfg)
    report_log = Path(cfg.out_dir).resolve() / "ray_reports.jsonl"
    trainer = build_trainer(
        cfg, num_workers=num_workers, use_gpu=use_gpu, storage_path=storage, name=cfg.name,
        callbacks=[ReportLog(report_log)], max_failures=max_failures,
    )
    print(
        f"Ray Train: {num_workers} worker(s), {'GPU/nccl' if use_gpu else 'CPU/gloo'}, "
        f"storage {storage}/{cfg.name}, max_failures={max_failures}", flush=True,
    )
    try:
        result = trainer.fit()
    except TrainingFailedError as e:
        err = user_error_in(e)
        if err is None:
            raise
        raise UserError(one_line(err) if str(err).strip() else "a worker failed") from None
    metrics: dict[str, Any] = dict(result.return_value or result.metrics or {})
    shown = ("step", "epoch", "val/miou", "val/best_miou", "val/best_step", "val/err_auroc", "val/ece")
    print("final metrics: " + ", ".join(f"{k}={_fmt(metrics[k])}" for k in shown if k in metrics), flush=True)
    if result.checkpoint is not None:
        print(f"latest checkpoint: {result.checkpoint.path}", flush=True)
    best = result.best_checkpoints or []
    if best:
        ckpt, m = max(best, key=lambda cm: cm[1].get("val/miou", float("-inf")))
        print(f"best checkpoint (val/miou={_fmt(m.get('val/miou'))}): {ckpt.path}", flush=True)
    print(f"reports log: {report_log}", flush=True)
    return metrics


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)
