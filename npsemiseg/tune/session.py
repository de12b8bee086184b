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

import contextlib
import os
import socket
from collections.abc import Iterator
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
    with pinned_local_address():
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host=dashboard_host,
                 _temp_dir=temp_dir, **kw)
    return dashboard_url()


@contextlib.contextmanager
def pinned_local_address() -> Iterator[str]:
    """Start the local instance on a known GCS port with ``RAY_ADDRESS`` naming it in its processes' environment.

    Ray Train's placement-group cleaner calls the State API without an address; when several Ray instances run on
    one machine (parallel test sessions, a stale local instance) its auto-detection fails, the cleaner thread dies,
    and a finished trial's worker resources are never returned, so the next trial hangs at worker start-up.
    Ray's daemons and workers inherit the driver's environment when they are spawned, so they find their own GCS.
    """
    from ray._private.services import get_node_ip_address

    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    addr = f"{get_node_ip_address()}:{port}"
    saved = {k: os.environ.get(k) for k in ("RAY_GCS_SERVER_PORT", "RAY_ADDRESS")}
    os.environ.update({"RAY_GCS_SERVER_PORT": str(port), "RAY_ADDRESS": addr})
    try:
        yield addr
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def dashboard_url() -> str:
    """``http://host:port`` of the connected cluster's dashboard, or ""."""
    from ray._private.worker import get_dashboard_url

    try:
        url = get_dashboard_url() or ""
    except Exception:
        return ""
    return url if not url or url.startswith("http") else f"http://{url}"
