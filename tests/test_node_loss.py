"""Node loss mid-trial on a multi-node cluster: the trial continues from its last checkpoint on another node.

A subprocess starts Ray's multi-node test cluster (``ray.cluster_utils.Cluster``: a head with 1 CPU that hosts the
sweep driver and the trial function, two 2-CPU worker nodes; its own temp dir and GCS port), runs a 1-trial sweep
whose Train worker needs 2 CPUs (so it can only run on a worker node), and, once the trial has written a
checkpoint, kills the node running that worker without a graceful shutdown (as a spot reclaim or a dead machine
would). With the sweep's retries set at the Tune layer only (Train gets 0), the trial restarts once, its Train run
continues from the checkpoint on the other node, and the results table holds one full-budget row.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES

REPO = Path(__file__).resolve().parents[1]
ITERS, EVERY = 40, 4

DRIVER = textwrap.dedent(
    """
    import json, os, socket, sys, threading, time
    from pathlib import Path

    import ray
    from ray.cluster_utils import Cluster

    from npsemiseg.tune.resources import TrialResources
    from npsemiseg.tune.space import load_space
    from npsemiseg.tune.sweep import SweepSettings, run_sweep

    space, storage = sys.argv[1], Path(sys.argv[2])

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    from ray._private.services import get_node_ip_address

    port = free_port()
    os.environ["RAY_ADDRESS"] = f"{get_node_ip_address()}:{port}"  # every Ray process finds this GCS (session.py)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "gcs_server_port": port, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": free_port()})
    assert cluster.address == os.environ["RAY_ADDRESS"], cluster.address
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False)
    settings = SweepSettings(space=load_space(space), experiment="loss", storage_root=str(storage),
                             num_samples=1, max_concurrent=1, n_startup_trials=1, grace_period=%(iters)d,
                             resources=TrialResources(1, 2.0, 0.0), max_failures=1, keep_checkpoints=True,
                             verbose=0)
    killed = {}

    def reported():
        # (pid of the trial function, step) of every result Tune logged for the trial, in order
        out = []
        for f in (storage / "loss" / "tune").glob("trial_*/result.json"):
            for line in f.read_text().splitlines():
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                out.append((r["pid"], r["step"]))
        return out

    def killer():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            # wait until Tune has received two reports with checkpoints (the Train run registered them), so the
            # restarted trial has a checkpoint to continue from
            ckpts = list((storage / "loss").glob("*/checkpoint_step*"))
            if len(reported()) >= 2:
                busy = ray._private.state.available_resources_per_node()
                for node in workers:
                    # the node whose CPUs are taken runs the Train worker (Ray omits resources at 0)
                    if node.node_id in busy and busy[node.node_id].get("CPU", 0.0) < 1:
                        killed.update(node=node.node_id, after=sorted(p.name for p in ckpts), t=time.time())
                        cluster.remove_node(node, allow_graceful=False)
                        return
            time.sleep(0.2)

    threading.Thread(target=killer, daemon=True).start()
    df = run_sweep(settings, export=False)
    from npsemiseg.tune.results import HISTORY
    import pandas as pd
    hist = pd.read_parquet(storage / "loss" / HISTORY)
    trial_dir = next((storage / "loss" / "tune").glob("trial_*"))
    print("RESULT " + json.dumps({
        "killed": {k: v for k, v in killed.items() if k != "t"},
        "failures": (trial_dir / "error.txt").read_text().count("Failure #") if (trial_dir / "error.txt").exists()
        else 0,
        "rows": df[["trial_id", "status", "iterations", "full_budget"]].to_dict("records"),
        "steps": [int(s) for s in hist["step"]],
        "reported": reported(),
        "alive": [n["NodeID"] for n in ray.nodes() if n["Alive"]],
    }))
    ray.shutdown()
    cluster.shutdown()
    """
) % {"iters": ITERS}


def _space(tmp_path: Path, demo_root: Path) -> Path:
    over = {k: v for k, v in TINY_OVERRIDES.items() if k != "train.conf_threshold"}
    over.update({"data.root": str(demo_root / "voc"), "device": "cpu", "train.iters": ITERS,
                 "train.eval_every": EVERY, "data.val_limit": 2})
    p = tmp_path / "space.yaml"
    p.write_text("splits: [demo/1_4]\nparams:\n  train.conf_threshold: {type: float, low: 0.5, high: 0.9}\n"
                 "overrides:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in over.items()))
    return p


@pytest.mark.slow
def test_trial_survives_the_loss_of_its_node(demo_root: Path, tmp_path: Path) -> None:
    ray_tmp = Path(tempfile.mkdtemp(prefix="npnl", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_TMPDIR=str(ray_tmp), PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    try:
        out = subprocess.run([sys.executable, str(script), str(_space(tmp_path, demo_root)), str(tmp_path / "rr")],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, out.stdout[-3000:] + out.stderr[-5000:]
    res = json.loads(lines[-1][len("RESULT "):])
    assert res["killed"], "the node was never killed"
    assert res["killed"]["node"] not in res["alive"]  # really gone
    assert res["failures"] == 1  # the trial failed once (its node), Tune restarted it once
    assert res["rows"] == [{"trial_id": res["rows"][0]["trial_id"], "status": "COMPLETE", "iterations": ITERS,
                            "full_budget": True}]
    steps = res["steps"]
    assert steps[-1] == ITERS
    # continuous: every evaluation step up to the budget is in the history, and after the restart the steps go on
    # from a checkpoint (they never fall back to the first evaluation)
    assert set(range(EVERY, ITERS + 1, EVERY)) <= set(steps)
    assert steps.count(EVERY) == 1 and all(b >= a - EVERY for a, b in zip(steps, steps[1:])), steps
    # the restart: a second trial-function process whose first report comes after the killed attempt's
    # checkpoints, not the first evaluation again (a restart from scratch would report step EVERY first)
    pids = list(dict.fromkeys(pid for pid, _ in res["reported"]))
    assert len(pids) == 2, res["reported"]
    first = [st for pid, st in res["reported"] if pid == pids[0]]
    second = [st for pid, st in res["reported"] if pid == pids[1]]
    assert len(first) >= 2 and EVERY < second[0] <= first[-1] + EVERY and second[-1] == ITERS, res["reported"]
