"""Driver-side preflight (no Ray): a sweep that cannot work stops with one line, exit 2, before any trial; and the
one-line-per-split verdict when every trial of a split errored."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_OVERRIDES

from npsemiseg.errors import UserError
from npsemiseg.models import weights as W
from npsemiseg.tune.cli import sweep_main
from npsemiseg.tune.preflight import error_reason, failed_split_lines, preflight
from npsemiseg.tune.space import load_space
from npsemiseg.tune.sweep import SweepSettings


def _space(tmp_path: Path, demo_root: Path, params: str, splits: str = "[demo/1_4, demo/1_8]") -> Path:
    over = {k: v for k, v in TINY_OVERRIDES.items() if k not in ("train.conf_threshold", "train.lr")}
    over.update({"data.root": str(demo_root / "voc"), "device": "cpu"})
    p = tmp_path / "space.yaml"
    p.write_text(f"splits: {splits}\nparams:\n{params}overrides:\n"
                 + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in over.items()))
    return p


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv(W.WEIGHTS_ENV, raising=False)


def test_preflight_passes_and_counts_each_split(tmp_path, demo_root):
    space = load_space(_space(tmp_path, demo_root, "  train.conf_threshold: {type: float, low: 0.5, high: 0.9}\n"))
    counts = preflight(SweepSettings(space=space, storage_root=str(tmp_path / "rr")), log=False)
    assert set(counts) == {"demo/1_4", "demo/1_8"} and counts["demo/1_4"] > counts["demo/1_8"] >= 1


def test_preflight_rejects_an_unknown_split(tmp_path, demo_root):
    space = load_space(_space(tmp_path, demo_root, "  train.ema_decay: {type: float, low: 0.9, high: 0.99}\n",
                              splits="[demo/1_4, demo/1_3]"))
    with pytest.raises(UserError, match=r"^split demo/1_3: .*demo/1_3"):
        preflight(SweepSettings(space=space, storage_root=str(tmp_path / "rr")), log=False)


def test_preflight_rejects_a_split_the_tree_cannot_fill(tmp_path, demo_root):
    space = load_space(_space(tmp_path, demo_root, "  train.ema_decay: {type: float, low: 0.9, high: 0.99}\n",
                              splits="[demo/1_4, voc/classic/1464]"))
    settings = SweepSettings(space=space, storage_root=str(tmp_path / "rr"))
    with pytest.raises(UserError, match=r"^split voc/classic/1464: "):
        preflight(settings, log=False)


def _real_sweep(tmp_path: Path, demo_root: Path, capsys, monkeypatch, split: str) -> tuple[int, str]:
    """`voc_search.py --data-root <tiny tree>` (the real recipe: ResNet-50 + ImageNet weights)."""
    import npsemiseg.tune.session as session

    connects: list[tuple] = []  # the shared test Ray session may be up already: watch the driver's connect
    monkeypatch.setattr(session, "connect", lambda *a, **k: connects.append((a, k)) or "")
    rc = sweep_main("voc", ["--data-root", str(demo_root / "voc"), "--splits", split,
                            "--storage-path", str(tmp_path / "rr"), "--trials", "2"])
    assert connects == []  # the driver never reached Ray: nothing was started
    assert not (tmp_path / "rr").exists()
    err = capsys.readouterr().err
    return rc, err


def test_missing_weights_stop_the_sweep_with_the_command_to_fetch_them(tmp_path, demo_root, capsys, no_weights,
                                                                      monkeypatch):
    rc, err = _real_sweep(tmp_path, demo_root, capsys, monkeypatch, "voc/classic/92")
    assert rc == 2 and err.count("\n") == 1, err
    assert "split voc/classic/92: model.pretrained=torchvision: resnet50-" in err
    assert "npsemiseg fetch-weights" in err


def test_unfillable_split_stops_the_sweep_in_one_line(tmp_path, demo_root, capsys, monkeypatch):
    wdir = tmp_path / "weights"
    wdir.mkdir()
    (wdir / W.weight_files("resnet50")[0]).write_bytes(b"present")  # found; loaded only inside a trial
    monkeypatch.setenv(W.WEIGHTS_ENV, str(wdir))
    rc, err = _real_sweep(tmp_path, demo_root, capsys, monkeypatch, "voc/classic/1464")
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("voc_search.py: error: split voc/classic/1464: ")


RAY_ERROR = """ray::ImplicitFunc.train() (pid=4242, ip=10.0.0.7, actor_id=ab, repr=run_trial)
  File "/x/trial.py", line 74, in run_trial
    trainer.fit()
ray.train.v2.api.exceptions.TrainingFailedError: Training failed due to worker errors:
[Rank 0 Error Snippet]:
Traceback (most recent call last):
  File "/x/io.py", line 50, in read_image
npsemiseg.data.io.DataError: /data/JPEGImages/2007_000032.jpg: cannot read image (truncated file)
"""


def test_error_reason_and_failed_split_lines():
    assert error_reason(RAY_ERROR) == "/data/JPEGImages/2007_000032.jpg: cannot read image (truncated file)"
    assert error_reason("boom\nValueError: bad thing") == "ValueError: bad thing"
    assert error_reason("just text") == "just text"
    lines = failed_split_lines({
        "voc/classic/92": [RAY_ERROR, RAY_ERROR],
        "voc/classic/183": [RAY_ERROR, None],  # one trial finished: not a failed split
        "voc/classic/366": [],
    })
    assert lines == ["split voc/classic/92: all 2 trial(s) failed: /data/JPEGImages/2007_000032.jpg: cannot read "
                     "image (truncated file)"]


@pytest.mark.slow
def test_sweep_whose_every_trial_errors_exits_1_with_one_line(tmp_path, demo_root):
    """A real (tiny) sweep in a subprocess with its own Ray: every trial raises inside its Train worker (fault
    injection, no retries), so the sweep writes its table and exits 1 with one line for the split."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    import pandas as pd

    repo = Path(__file__).resolve().parents[1]
    space = _space(tmp_path, demo_root, "  train.ema_decay: {type: float, low: 0.9, high: 0.99}\n",
                   splits="[demo/1_4]")
    ray_tmp = tempfile.mkdtemp(prefix="npfail", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, PYTHONPATH=str(repo), NPSEMISEG_FAIL_AT_STEP="2")
    cmd = [sys.executable, "-m", "npsemiseg", "sweep", "--dataset", "voc", "--data-root", str(demo_root / "voc"),
           "--space", str(space), "--storage-path", str(tmp_path / "rr"), "--experiment", "fails", "--trials", "1",
           "--n-startup-trials", "1", "--num-cpus", "2", "--max-failures", "0", "--set", "train.iters=4",
           "train.eval_every=2"]
    try:
        out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("npsemiseg: error: ")]
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-3000:]
    assert errors == ["npsemiseg: error: split demo/1_4: all 1 trial(s) failed: RuntimeError: fault injection: "
                      "NPSEMISEG_FAIL_AT_STEP=2 reached at step 2"], errors
    table = pd.read_parquet(tmp_path / "rr" / "fails" / "results.parquet")
    assert list(table["status"]) == ["ERROR"]
