"""Connecting the sweep driver to Ray: an existing cluster when there is one, else a local instance.

- ``RAY_ADDRESS`` set, or ``--address``: join that cluster (``address="auto"`` finds the local head node that
  ``ray up`` / ``ray start --head`` started).
- ``--use-gpu`` without an address: try ``auto`` (a cluster on this machine), else start a local instance.
- otherwise (the CPU demo): always a fresh local instance (``address="local"``), so a leftover
  ``/tmp/ray/ray_current_cluster`` can never attach the demo to a stranger's cluster.

The dashboard stays on (an ASHA-stopped Train run's clean-up needs it; see ARCHITECTURE.md) and is bound to
127.0.0.1 unless the user asks otherwise.
"""
from __future__ import annotations

import os
from typing import Any


def connect(address: str | None = None, use_gpu: bool = False, num_cpus: int | None = None,
            dashboard_host: str = "127.0.0.1", temp_dir: str | None = None, log_to_driver: bool = True) -> str:
    """Initialise Ray (once) and return the dashboard URL (or "" when the cluster has no dashboard)."""
    import ray

    if ray.is_initialized():
        return dashboard_url()
    kw: dict[str, Any] = {"configure_logging": False, "log_to_driver": log_to_driver}
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, **kw)
        return dashboard_url()
    if use_gpu:
        try:
            ray.init(address="auto", **kw)
            return dashboard_url()
        except ConnectionError:
            pass
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host=dashboard_host,
             _temp_dir=temp_dir, **kw)
    return dashboard_url()


def dashboard_url() -> str:
    """``http://host:port`` of the connected cluster's dashboard, or ""."""
    from ray._private.worker import get_dashboard_url

    try:
        url = get_dashboard_url() or ""
    except Exception:
        return ""
    return url if not url or url.startswith("http") else f"http://{url}"
