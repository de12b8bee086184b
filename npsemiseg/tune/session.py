"""Connecting the sweep driver to Ray: ``distributed.connect``'s policy, with the sweep's choice of cluster.

- ``RAY_ADDRESS`` set, or ``--address``: join that cluster (``address="auto"`` finds the local head node that
  ``ray up`` / ``ray start --head`` started).
- ``--use-gpu`` without an address: join a live ``ray start`` cluster on this machine, else start a local instance.
- otherwise (the CPU demo): always a fresh local instance (``address="local"``), so a leftover
  ``/tmp/ray/ray_current_cluster`` can never attach the demo to a stranger's cluster.

The dashboard stays on (an ASHA-stopped Train run's clean-up needs it; see ``distributed/connect.py``) and is
bound to 127.0.0.1 unless the user asks otherwise.
"""
from __future__ import annotations

from npsemiseg.distributed.connect import connect as connect_ray


def connect(address: str | None = None, use_gpu: bool = False, num_cpus: int | None = None,
            dashboard_host: str = "127.0.0.1", temp_dir: str | None = None, log_to_driver: bool = True) -> str:
    """Initialise Ray (once) and return the dashboard URL (or "" when the cluster has no dashboard)."""
    return connect_ray(address, join_local_cluster=use_gpu, num_cpus=num_cpus, dashboard_host=dashboard_host,
                       temp_dir=temp_dir, log_to_driver=log_to_driver)
