"""A sweep whose storage is a real S3 API (moto server on 127.0.0.1) and whose head loses its disk.

The sweep runs as `npsemiseg sweep` in a subprocess with its own Ray instance (RAY_TMPDIR in a fresh folder) and
the AWS_* environment pointing at the server. Checked in the bucket: the results table appears after the first trial
ends, while the sweep still runs; at the end the table, history, plots, Optuna journal, exports and each trial's
TensorBoard run (with HParams) are there, Ray's own TensorBoard logger wrote nothing, and each trial kept only the
checkpoint its row points to. Then the local experiment folder is deleted (a new head) and the same command restores
the sweep from the bucket alone: no trial runs again and the table and study are unchanged.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import pandas as pd
import pytest
from conftest import TINY_OVERRIDES
from s3_server import s3_objects, s3_server

REPO = Path(__file__).resolve().parents[1]
SPACE = """splits: [demo/1_4]
params:
  train.conf_threshold: {type: float, low: 0.5, high: 0.9}
  model.latent_dim: {type: categorical, choices: [4, 8]}
"""


def _space(tmp_path: Path, demo_root: Path) -> Path:
    over = {k: v for k, v in TINY_OVERRIDES.items() if k not in ("train.conf_threshold", "model.latent_dim")}
    over.update({"device": "cpu", "train.iters": 4, "train.eval_every": 2, "data.val_limit": 2})
    p = tmp_path / "space.yaml"
    p.write_text(SPACE + "overrides:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in over.items()))
    return p


def _objects(env: dict, prefix: str) -> dict[str, int]:
    return s3_objects(env, "sweeps", prefix)


def _table(env: dict, key: str, tmp: Path) -> pd.DataFrame:
    dst = tmp / key.replace("/", "_")
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).download_file("sweeps", key, str(dst))
    return pd.read_parquet(dst)


@pytest.mark.slow
def test_sweep_lives_in_s3_and_restores_on_an_empty_head(demo_root: Path, tmp_path: Path) -> None:
    ray_tmp = Path(tempfile.mkdtemp(prefix="nps3", dir="/tmp"))
    with s3_server("sweeps") as s3:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(s3, RAY_TMPDIR=str(ray_tmp), PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
        head = tmp_path / "head"
        cmd = [sys.executable, "-m", "npsemiseg", "sweep", "--dataset", "voc", "--data-root", str(demo_root / "voc"),
               "--space", str(_space(tmp_path, demo_root)), "--storage-path", "s3://sweeps/np",
               "--local-dir", str(head), "--experiment", "s3x", "--trials", "2", "--max-concurrent", "1",
               "--n-startup-trials", "1", "--grace-period", "4", "--num-cpus", "2", "--max-failures", "0"]
        log = open(tmp_path / "run1.log", "w")
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        mid = None
        try:
            deadline = time.time() + 400
            while proc.poll() is None and time.time() < deadline:
                if mid is None and "np/s3x/results.parquet" in _objects(s3, "np/s3x/"):
                    running = proc.poll() is None
                    mid = (_table(s3, "np/s3x/results.parquet", tmp_path), running)
                time.sleep(0.5)
            rc = proc.wait(timeout=5)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
        out1 = (tmp_path / "run1.log").read_text()
        assert rc == 0, out1[-4000:]
        assert mid is not None and mid[1] and len(mid[0]) == 1, "no partial table in the bucket mid-sweep"

        keys = _objects(s3, "np/s3x/")
        for name in ("results.parquet", "results.csv", "history.parquet", "optuna_journal.log", "trial_events.jsonl",
                     "exports/demo/1_4/model.pt", "exports/demo/1_4/sweep.json", "plots/best_by_split.png"):
            assert f"np/s3x/{name}" in keys, (name, sorted(keys))
        assert any(k.startswith("np/s3x/plots/") and k.endswith(".png") for k in keys)
        table = _table(s3, "np/s3x/results.parquet", tmp_path)
        assert len(table) == 2 and table["full_budget"].all()
        assert all(p.startswith("s3://sweeps/np/s3x/") for p in table["checkpoint_path"])
        # retention: each trial's Train run keeps exactly the checkpoint its row names
        for _, row in table.iterrows():
            ckpts = {k.split("/")[3] for k in keys
                     if k.startswith(f"np/s3x/{row['trial_id']}/checkpoint_step") and k.count("/") > 3}
            assert ckpts == {row["checkpoint_path"].rstrip("/").rsplit("/", 1)[-1]}, (row["trial_id"], ckpts)
        assert "[retention] removed 2 checkpoint(s)" in out1  # 2 evaluations per trial, 1 kept each
        # TensorBoard: one run per trial in its storage folder (scalars + HParams), nothing from Ray's logger
        tb = [k for k in keys if "/tb/" in k and "tfevents" in k]
        trials = {re.search(r"/(trial_[^/]+)/tb/", k).group(1) for k in tb}
        assert len(trials) == 2 and any(k.endswith(".hparams") for k in tb)
        assert all(k.startswith("np/s3x/tune/trial_") for k in tb), tb  # the trial's folder in the one Tuner
        assert not [k for k in keys if re.search(r"/trial_[^/]+/events\.out\.tfevents", k)]
        for t in trials:
            kinds = {k.endswith(".hparams") for k in tb if f"/{t}/tb/" in k}
            assert kinds == {True, False}, t  # scalars mirrored from rank 0 + the trial's HParams file

        # a new head: the local experiment folder is gone; the same command restores from the bucket alone
        shutil.rmtree(head)
        run2 = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert run2.returncode == 0, run2.stdout[-3000:] + run2.stderr[-3000:]
        assert "[storage] restored optuna_journal.log" in run2.stdout and "resuming" in run2.stdout
        again = _table(s3, "np/s3x/results.parquet", tmp_path)
        assert sorted(again["trial_id"]) == sorted(table["trial_id"])
        assert again.set_index("trial_id")["best_miou"].to_dict() == table.set_index("trial_id")["best_miou"].to_dict()
        import optuna

        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(head / "s3x" / "optuna_journal.log")))
        study = optuna.load_study(study_name="s3x/demo/1_4", storage=storage)
        assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    shutil.rmtree(ray_tmp, ignore_errors=True)
