"""Where a trial's driver function runs: on the head node, never on a (spot) GPU worker.

A trial function holds a sliver of CPU (``TRIAL_DRIVER_CPU``) for as long as its trial runs. Placed on a GPU node it
would (a) die with that node, taking the trial's Train controller with it, and (b) leave the node short of a whole
CPU, so an 8-CPU Train worker of the next trial no longer fits on an 8-CPU ``gpu_1x`` node. Ray gives the head node
a built-in resource, ``node:__internal_head__`` (Ray's own Train state actor pins itself with it), so asking for
a thousandth of it keeps every trial function on the head; the head is on-demand in ``cluster/gpu.yaml``.
"""
from __future__ import annotations

from npsemiseg.tune.resources import TRIAL_DRIVER_CPU

HEAD_RESOURCE = "node:__internal_head__"
HEAD_SHARE = 0.001  # up to 1000 trial functions at once on the head


def trial_driver_resources() -> dict[str, float]:
    """``tune.with_resources`` of the trial function: its CPU sliver, on the head node."""
    return {"CPU": TRIAL_DRIVER_CPU, HEAD_RESOURCE: HEAD_SHARE}
