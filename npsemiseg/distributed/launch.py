"""Driver side of a data-parallel run: connect to (or start) Ray, fit a TorchTrainer, print the outcome.

    npsemiseg train --config configs/demo.yaml --num-workers 2 --storage-path /tmp/npss_runs

``npsemiseg train`` (engine/cli.py) calls ``run_distributed`` when ``--num-workers`` > 1 or ``--use-gpu``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from npsemiseg.config import Config


def cluster_address() -> str:
    """``"auto"`` when ``RAY_ADDRESS`` is set or a Ray GCS process runs on this node, else ``"local"``.

    ``"local"`` always starts a fresh instance, so a stale ``/tmp/ray/ray_current_cluster`` left by a dead
    cluster cannot hijack the run (a bare ``ray.init()`` would try to attach to it).
    """
    if os.environ.get("RAY_ADDRESS"):
        return "auto"
    try:
        from ray._private.services import find_gcs_addresses

        if find_gcs_addresses():
            return "auto"
    except Exception:  # noqa: BLE001 - private helper moved: fall back to a local instance
        pass
    return "local"


def ensure_ray(num_cpus: int | None = None) -> str | None:
    """Initialise Ray once per process; returns the dashboard URL when there is one."""
    import ray

    if ray.is_initialized():
        return None
    address = cluster_address()
    if address == "auto":
        info = ray.init(address="auto", configure_logging=False)
    else:
        info = ray.init(
            address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
            configure_logging=False,
        )
    url = getattr(info, "dashboard_url", None) or None
    if url:
        print(f"Ray dashboard: http://{url}" if "://" not in url else f"Ray dashboard: {url}", flush=True)
    return url


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
    from npsemiseg.distributed.trainer import ReportLog, build_trainer

    ensure_ray()
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
    result = trainer.fit()
    metrics: dict[str, Any] = dict(result.return_value or result.metrics or {})
    shown = {k: v for k, v in metrics.items() if k.startswith("val/") or k in ("step", "epoch")}
    print("final metrics: " + ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(shown.items())), flush=True)
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
