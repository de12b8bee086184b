"""Sweep storage on a real S3 API (moto server on 127.0.0.1), no Ray: the pyarrow layer, the per-trial table
rewrite + mirror, restore on an empty head, retention, TensorBoard mirroring, fetch-weights to/from a bucket."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from conftest import TINY_OVERRIDES
from s3_server import s3_objects, s3_server

from npsemiseg.tune.retention import prune_checkpoints
from npsemiseg.tune.space import load_space
from npsemiseg.tune.storage import JOURNAL, Storage, experiment_storage, restore_local, sync_up
from npsemiseg.tune.sweep import SweepSettings


@pytest.fixture(scope="module")
def s3():
    with s3_server("sweeps") as env:
        yield env


def _keys(env: dict, prefix: str) -> dict[str, int]:
    return s3_objects(env, "sweeps", prefix)


def test_storage_roundtrip_on_s3(s3, tmp_path):
    src = tmp_path / "src"
    (src / "plots").mkdir(parents=True)
    (src / "results.csv").write_text("a,b\n1,2\n")
    (src / "plots" / "p.png").write_bytes(b"\x89PNG" + b"0" * 100)
    (src / "exports").mkdir()
    (src / "exports" / "model.pt").write_bytes(b"m" * 10)
    st = Storage("s3://sweeps/rt")
    assert st.remote and not st.exists()
    assert st.put_tree(src, only=("results.csv", "plots")) == 8 + 104
    assert _keys(s3, "rt/") == {"rt/results.csv": 8, "rt/plots/p.png": 104}  # exports not mirrored
    assert st.size() == 112 and st.exists("plots") and st.dirs() == ["plots"]
    assert st.get_tree("", tmp_path / "back") == 2
    assert (tmp_path / "back" / "plots" / "p.png").read_bytes() == (src / "plots" / "p.png").read_bytes()
    assert not st.get_file("missing.txt", tmp_path / "x")
    st.delete_dir("plots")
    assert list(_keys(s3, "rt/")) == ["rt/results.csv"]


def _settings(tmp_path: Path, demo_root: Path, storage: str, local: Path) -> SweepSettings:
    over = {k: v for k, v in TINY_OVERRIDES.items() if k != "train.conf_threshold"}
    over.update({"data.root": str(demo_root / "voc"), "device": "cpu"})
    space = tmp_path / "space.yaml"
    space.write_text("splits: [demo/1_4]\nparams:\n  train.conf_threshold: {type: float, low: 0.5, high: 0.9}\n"
                     "overrides:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in over.items()))
    return SweepSettings(space=load_space(space), experiment="exp", storage_root=storage, local_dir=str(local))


def _fake_trial(trial_id: str, step: int, miou: float, ckpt: str) -> SimpleNamespace:
    last = {"step": step, "val/miou": miou, "val/ece": 0.1, "time_total_s": 5.0, "checkpoint_path": ckpt,
            "training_iteration": step // 2, "trial_id": trial_id}
    return SimpleNamespace(trial_id=trial_id, config={"train.conf_threshold": 0.7, "data.split": "demo/1_4"},
                           last_result=last, path=f"sweeps/p/exp/tune/trial_{trial_id}")


def test_table_rewritten_per_trial_mirrored_and_restored_on_an_empty_head(s3, tmp_path, demo_root):
    from npsemiseg.tune.callbacks import drain, write_trial_row
    from npsemiseg.tune.results import sweep_context
    from npsemiseg.tune.timing import append_event

    settings = _settings(tmp_path, demo_root, "s3://sweeps/p", tmp_path / "head1")
    settings.experiment_dir.mkdir(parents=True)
    import optuna

    from npsemiseg.tune.searcher import journal_storage

    optuna.create_study(study_name="exp/demo/1_4", storage=journal_storage(settings.journal_path))
    journal = settings.journal_path.read_text()
    append_event(settings.events_path, "start", trial_id="t1", split="demo/1_4")
    append_event(settings.events_path, "end", trial_id="t1", split="demo/1_4", status="TERMINATED")
    hist = [{"step": 2, "val/miou": 0.2, "checkpoint_path": "sweeps/p/exp/t1/checkpoint_step00000002_x"},
            {"step": 4, "val/miou": 0.3, "checkpoint_path": "sweeps/p/exp/t1/checkpoint_step00000004_x"}]
    write_trial_row(settings, _fake_trial("t1", 4, 0.3, hist[-1]["checkpoint_path"]), hist, None,
                    sweep_context(settings, 1))
    assert (settings.experiment_dir / "results.parquet").is_file()  # the table at once, on the Tune loop
    drain()  # plots and uploads in the background writer
    keys = _keys(s3, "p/exp/")
    assert {"p/exp/results.parquet", "p/exp/results.csv", "p/exp/history.parquet", "p/exp/optuna_journal.log",
            "p/exp/trial_events.jsonl"} <= set(keys)
    assert any(k.startswith("p/exp/plots/") for k in keys)
    # a second trial ends: the table in the bucket now has both rows (the first kept, not rewritten from scratch)
    write_trial_row(settings, _fake_trial("t2", 2, 0.1, ""), hist[:1],
                    RuntimeError("ray::run_trial() (pid=7, ip=127.0.0.1)\nnpsemiseg.errors.UserError: boom"),
                    sweep_context(settings, 1))
    drain()
    st = experiment_storage(settings)
    st.get_file("results.parquet", tmp_path / "r.parquet")
    df = pd.read_parquet(tmp_path / "r.parquet").set_index("trial_id")
    assert list(df.index) == ["t1", "t2"] and df.loc["t1", "status"] == "COMPLETE"
    assert df.loc["t2", "status"] == "ERROR" and df.loc["t1", "checkpoint_path"].startswith("s3://sweeps/p/exp/t1/")
    assert df.loc["t1", "best_miou"] == pytest.approx(0.3)
    # the sweep's table columns: seed, split checksum, times from the events, relative/URI paths, null errors
    assert df.loc["t1", "split"] == "demo/1_4" and df.loc["t1", "seed"] == settings.base.seed
    assert isinstance(df.loc["t1", "split_checksum"], str) and len(df.loc["t1", "split_checksum"]) >= 16
    assert df.loc["t1", "start_time"] is not None and df.loc["t1", "end_time"] is not None
    assert pd.isna(df.loc["t1", "error"]) and df.loc["t2", "error"] == "boom"
    assert "optuna_trial" in df.columns and df.loc["t1", "train.conf_threshold"] == pytest.approx(0.7)
    # a new head with an empty local disk: the journal and tables come back from the bucket alone
    head2 = _settings(tmp_path, demo_root, "s3://sweeps/p", tmp_path / "head2")
    got = restore_local(head2)
    assert JOURNAL in got and "results.parquet" in got and "history.parquet" in got and "trial_events.jsonl" in got
    assert (head2.experiment_dir / JOURNAL).read_text() == journal
    assert restore_local(head2) == []  # nothing twice
    (head2.experiment_dir / "exports" / "demo" / "1_4").mkdir(parents=True)
    (head2.experiment_dir / "exports" / "demo" / "1_4" / "model.pt").write_bytes(b"m")
    assert sync_up(head2) > 0 and "p/exp/exports/demo/1_4/model.pt" not in _keys(s3, "p/exp/")
    sync_up(head2, exports=True)
    assert "p/exp/exports/demo/1_4/model.pt" in _keys(s3, "p/exp/")


@pytest.mark.parametrize("where", ["s3", "local"])
def test_retention_keeps_only_the_row_checkpoint(s3, tmp_path, where):
    root = "s3://sweeps/ret" if where == "s3" else str(tmp_path / "ret")
    exp = Storage(root)
    src = tmp_path / "ck"
    for trial in ("a", "b", "c"):
        for step in (2, 4, 6):
            d = src / trial / f"checkpoint_step{step:08d}_x"
            d.mkdir(parents=True)
            (d / "checkpoint.pt").write_bytes(b"0" * 1000 * step)
    (src / "a" / "checkpoint_manager_snapshot.json").write_text("{}")
    exp.put_tree(src)
    df = pd.DataFrame([
        {"trial_id": "a", "status": "COMPLETE", "checkpoint_path": f"{root}/a/checkpoint_step00000004_x"},
        {"trial_id": "b", "status": "STOPPED", "checkpoint_path": f"{root}/b/checkpoint_step00000002_x"},
        {"trial_id": "c", "status": "ERROR", "checkpoint_path": f"{root}/c/checkpoint_step00000006_x"},
    ])
    res = prune_checkpoints(exp, df)
    assert res.removed == 4 and res.freed_bytes == (2000 + 6000) + (4000 + 6000)
    assert res.kept == 5 and res.kept_bytes == 4000 + 2000 + (2000 + 4000 + 6000)
    assert exp.dirs("a") == ["checkpoint_step00000004_x"] and exp.dirs("b") == ["checkpoint_step00000002_x"]
    assert len(exp.dirs("c")) == 3  # errored: kept whole, a rerun resumes it
    assert exp.exists("a/checkpoint_manager_snapshot.json")
    assert "freed 0.0 MiB" in res.line() or "freed" in res.line()


def test_tensorboard_mirror_and_hparams(s3, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from npsemiseg.distributed.tbsync import TensorBoardSync
    from npsemiseg.tune.tensorboard import tensorboard_dest, write_hparams

    local = tmp_path / "trial" / "tb"
    write_hparams(local, "demo/1_4", {"train.lr": 0.01, "model.latent_dim": 8})
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(local))
    dest = tensorboard_dest("s3://sweeps/tb", "exp", "/local/stage/exp/tune/trial_t1")
    assert dest == "s3://sweeps/tb/exp/tune/trial_t1/tb"
    sync = TensorBoardSync(local, dest, every_s=0.05).start()
    for step in range(3):
        w.add_scalar("val/miou", 0.1 * step, step)
    w.close()
    assert sync.stop() == 2  # the HParams file and the scalar file: one folder, one run
    back = tmp_path / "back"
    Storage("s3://sweeps/tb/exp/tune/trial_t1/tb").get_tree("", back)
    acc = EventAccumulator(str(back)).Reload()
    assert [e.step for e in acc.Scalars("val/miou")] == [0, 1, 2]
    plugin = acc.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugin and b"demo/1_4" in plugin["_hparams_/session_start_info"]


def test_fetch_weights_to_and_from_a_bucket(s3, tmp_path):
    import torch

    from npsemiseg.models.weights import fetch_weights, weight_files

    name = weight_files("resnet18")[0]
    (tmp_path / "mirror").mkdir()
    torch.save({"w": torch.zeros(2)}, tmp_path / "mirror" / name)
    assert fetch_weights(["resnet18"], "s3://sweeps/weights", source=str(tmp_path / "mirror"),
                         check_hash=False) == [f"s3://sweeps/weights/{name}"]
    got = fetch_weights(["resnet18"], str(tmp_path / "node"), source="s3://sweeps/weights", check_hash=False)
    assert Path(got[0]).read_bytes() == (tmp_path / "mirror" / name).read_bytes()


def test_split_of_a_trial_in_a_tuner_for_every_split():
    from npsemiseg.tune.callbacks import split_of

    assert split_of(SimpleNamespace(trial_id="t", config={"data.split": "demo/1_4"})) == "demo/1_4"
    with pytest.raises(KeyError, match="no split"):
        split_of(SimpleNamespace(trial_id="t", config={"train.lr": 0.1}))
