"""The one policy for connecting a driver to Ray (``npsemiseg train --num-workers N`` and the sweeps).

In order:
1. Ray already initialised in this process: keep that connection.
2. An explicit address (``--address``) or ``RAY_ADDRESS``: join that cluster.
3. ``join_local_cluster`` and a live ``ray start`` cluster on this node (its address file AND a running GCS):
   join it. A bare ``ray.init()`` would also attach to a stale address file left by a dead cluster, or to another
   program's private instance on a shared machine, so only this check counts. ``train`` always looks; the sweeps
   look only with ``--use-gpu`` (the CPU demo always starts its own instance).
4. Otherwise a fresh local instance (``address="local"``) on a pinned GCS port, with the dashboard on (an
   ASHA-stopped Train run's clean-up needs it) bound to 127.0.0.1.
"""
from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from typing import Any


def cluster_address() -> str:
    """``"auto"`` when ``RAY_ADDRESS`` is set, the address of a live ``ray start`` cluster on this node (recorded
    in ``/tmp/ray/ray_current_cluster`` and with its GCS running), else ``"local"`` (a fresh instance)."""
    if os.environ.get("RAY_ADDRESS"):
        return "auto"
    try:
        from ray._private.services import find_bootstrap_address, find_gcs_addresses

        recorded = find_bootstrap_address(None)
        if recorded and recorded in find_gcs_addresses():
            return recorded
    except Exception:  # noqa: BLE001 - private helpers moved: fall back to a local instance
        pass
    return "local"


def connect(address: str | None = None, *, join_local_cluster: bool = True, num_cpus: int | None = None,
            dashboard_host: str = "127.0.0.1", temp_dir: str | None = None, log_to_driver: bool = True) -> str:
    """Initialise Ray once (see the module docstring) and return the dashboard URL ("" when there is none)."""
    import ray

    if ray.is_initialized():
        return dashboard_url()
    kw: dict[str, Any] = {"configure_logging": False, "log_to_driver": log_to_driver}
    address = address or os.environ.get("RAY_ADDRESS") or (cluster_address() if join_local_cluster else "local")
    if address != "local":
        ray.init(address=address, **kw)
        return dashboard_url()
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
