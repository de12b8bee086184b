"""Resume after SIGKILL: kill the sweep driver mid-sweep, rerun the same command, get the complete table.

The sweep runs in a subprocess with its own Ray instance (RAY_TMPDIR in a fresh folder, RAY_ADDRESS unset). It is
killed when one trial has finished and the next has written at least one checkpoint but not its last. The rerun
must not rerun the finished trial, must continue the unfinished one from a checkpoint (not from step 0),
and must end with a results row per trial, every one at the full budget.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_OVERRIDES

from npsemiseg.tune.common import JOURNAL

REPO = Path(__file__).resolve().parents[1]
ITERS = 24
STEP_RE = re.compile(r"checkpoint_step(\d+)_")
SPACE = """
splits: [demo/1_4]
params:
  train.conf_threshold: {type: float, low: 0.5, high: 0.9}
  model.bank_capacity: {type: int, low: 16, high: 64}
"""


def _space(tmp_path: Path, demo_root: Path) -> Path:
    over = {k: v for k, v in TINY_OVERRIDES.items() if k not in ("train.conf_threshold", "model.bank_capacity")}
    over.update({"data.root": str(demo_root / "voc"), "device": "cpu", "train.iters": ITERS, "train.eval_every": 4,
                 "data.val_limit": 2})
    p = tmp_path / "space.yaml"
    p.write_text(SPACE + "overrides:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in over.items()))
    return p


def _steps(run_dir: Path) -> list[tuple[int, str]]:
    return sorted((int(m.group(1)), p.name) for p in run_dir.glob("checkpoint_step*") if (m := STEP_RE.match(p.name)))


def _train_runs(exp: Path) -> dict[str, list[tuple[int, str]]]:
    """(step, dir name) of each checkpoint of each trial's Train run (<exp>/<trial_id>/checkpoint_step*)."""
    if not exp.is_dir():
        return {}
    return {p.name: _steps(p) for p in exp.iterdir() if p.is_dir() and re.fullmatch(r"[0-9a-f]{8}", p.name)}


def _descendants(pid: int) -> list[int]:
    """Pids of every process below ``pid`` (from /proc)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        cur = todo.pop()
        kids = [c for c, p in parent.items() if p == cur]
        out += kids
        todo += kids
    return out


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the driver first, then whatever it started (its Ray instance), by pid."""
    kids = _descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    for pid in kids + _descendants(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(1)


@pytest.mark.slow
def test_sigkill_driver_then_resume(demo_root: Path, tmp_path: Path) -> None:
    ray_tmp = Path(tempfile.mkdtemp(prefix="npk", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"RAY_TMPDIR": str(ray_tmp), "PYTHONUNBUFFERED": "1"})
    storage = tmp_path / "rr"
    cmd = [sys.executable, str(REPO / "sweeps" / "voc_search.py"), "--space", str(_space(tmp_path, demo_root)),
           "--storage-path", str(storage), "--experiment", "kill", "--trials", "2", "--max-concurrent", "1",
           "--n-startup-trials", "1", "--grace-period", str(ITERS), "--num-to-keep", "20", "--num-cpus", "2",
           "--keep-checkpoints"]
    exp = storage / "kill"
    log1 = open(tmp_path / "run1.log", "w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log1, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        before: dict[str, list[tuple[int, str]]] = {}
        deadline = time.time() + 420  # generous: a loaded 2-core machine starts trials slowly
        while time.time() < deadline and proc.poll() is None:
            runs = _train_runs(exp)
            done = [t for t, s in runs.items() if s and s[-1][0] == ITERS]
            partial = [t for t, s in runs.items() if s and s[-1][0] < ITERS]
            if done and partial:
                time.sleep(2.5)  # > TUNE_GLOBAL_CHECKPOINT_S (2 s): the finished trial is in the experiment state
                before = _train_runs(exp)
                break
            time.sleep(0.25)
        assert proc.poll() is None, "the sweep ended before it could be killed:\n" + (tmp_path / "run1.log").read_text()
        assert before, "no kill point reached:\n" + (tmp_path / "run1.log").read_text()[-3000:]
    finally:
        _kill_tree(proc)
        log1.close()
    finished = [t for t, s in before.items() if s[-1][0] == ITERS]
    unfinished = [t for t, s in before.items() if s[-1][0] < ITERS]
    assert len(finished) == 1 and len(unfinished) == 1, before
    if (exp / "results.parquet").exists():  # rewritten as each trial ends: at most the finished trial's row
        assert set(pd.read_parquet(exp / "results.parquet")["trial_id"]) <= set(finished)

    try:
        run2 = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert run2.returncode == 0, run2.stdout[-3000:] + run2.stderr[-3000:]
    assert "resuming" in run2.stdout

    after = _train_runs(exp)
    assert set(after) == set(before)  # no third trial, nothing rerun under a new id
    assert after[finished[0]] == before[finished[0]]  # the finished trial was not rerun
    # Continued from a checkpoint, not from scratch: the first checkpoint written after the kill is past the first
    # evaluation. (It may redo a few steps: Train resumes from the last checkpoint its controller had registered.)
    new = sorted(set(after[unfinished[0]]) - set(before[unfinished[0]]))
    assert new and new[-1][0] == ITERS and new[0][0] > before[unfinished[0]][0][0], (before, after)

    table = pd.read_parquet(exp / "results.parquet")
    assert sorted(table["trial_id"]) == sorted(before)
    assert table["full_budget"].all() and (table["iterations"] == ITERS).all()
    assert (exp / "exports" / "demo" / "1_4" / "model.pt").is_file()

    import optuna  # the study in the journal continued: both trials told, none left RUNNING

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(exp / JOURNAL)))
    study = optuna.load_study(study_name="kill/demo/1_4", storage=storage)
    states = [t.state.name for t in study.trials]
    assert "RUNNING" not in states and states.count("COMPLETE") == 2, states
    done = {t.user_attrs["ray_trial_id"]: t for t in study.trials if t.state.name == "COMPLETE"}
    assert set(done) == set(before) and all(t.user_attrs["steps"] == ITERS for t in done.values())

    # Training time kept counting across the restore: the resumed trial's total exceeds what it had trained
    # before the kill, and its attempts are both in the events log.
    import torch

    t_before = max(torch.load(exp / unfinished[0] / name / "checkpoint.pt", weights_only=True)["train_time_s"]
                   for _, name in before[unfinished[0]])
    row = table.set_index("trial_id").loc[unfinished[0]]
    assert row["train_time_s"] > t_before and row["attempts"] == 2, (row["train_time_s"], t_before)
