"""Distributed layer without a Ray cluster: backend/norm choice, checkpoint hygiene, samplers, fault marker,
trainer configuration, and the variable-length all-gather over a real 2-process gloo group."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from npsemiseg.config import Config, apply_overrides
from npsemiseg.distributed.context import (
    DDP_KWARGS,
    FAIL_AT_STEP_ENV,
    FaultInjector,
    RayContext,
    choose_backend,
    clean_checkpoint,
    fail_at_step_from_env,
    scalar_metrics,
    strip_module_prefix,
)
from npsemiseg.engine.context import use_sync_bn


def test_backend_choice() -> None:
    assert choose_backend(use_gpu=True) == "nccl"
    assert choose_backend(use_gpu=False) == "gloo"


@pytest.mark.parametrize(
    ("sync_bn", "device", "world", "expected"),
    [
        (True, "cuda", 2, True),
        (True, "cuda", 1, False),  # nothing to synchronise with
        (True, "cpu", 2, False),  # SyncBatchNorm has no CPU kernel
        (False, "cuda", 4, False),
    ],
)
def test_sync_bn_choice(sync_bn: bool, device: str, world: int, expected: bool) -> None:
    cfg = apply_overrides(Config(), {"train.sync_bn": sync_bn})
    assert use_sync_bn(cfg, torch.device(device), world) is expected


TINY_MODEL = {"model.backbone": "resnet18", "model.width": 8, "model.aspp_channels": 16, "model.latent_dim": 8,
              "model.bank_capacity": 32, "model.t_train": 2, "data.crop_size": 32, "data.batch_size_l": 2,
              "data.batch_size_u": 2, "device": "cpu", "train.conf_threshold": 0.0}


@pytest.mark.parametrize("over", [
    {}, {"train.semi": False}, {"model.np_mode": "released"}, {"model.kl_weight": 0.0},
    {"model.head": "plain"}, {"model.head": "mcdropout"},
], ids=["np-semi", "np-sup", "np-released", "np-no-kl", "plain", "mcdropout"])
def test_every_parameter_gets_a_gradient_so_ddp_needs_no_unused_search(over: dict) -> None:
    """``DDP_KWARGS`` turns find_unused_parameters off; that is only valid while no parameter is left out of a
    step's backward pass (two steps: the first with empty banks, the second with filled ones)."""
    from npsemiseg.engine.context import RunContext
    from npsemiseg.engine.step import build_state, train_step

    cfg = apply_overrides(Config(), {**TINY_MODEL, **over})
    assert DDP_KWARGS == {"find_unused_parameters": False}
    torch.manual_seed(0)
    state = build_state(cfg, RunContext("cpu"), num_classes=5)
    s = cfg.data.crop_size
    bl = {"image": torch.randn(2, 3, s, s), "mask": torch.randint(0, 5, (2, s, s))}
    bu = {"image_w": torch.randn(2, 3, s, s), "image_s": torch.randn(2, 3, s, s),
          "ignore": torch.zeros(2, s, s, dtype=torch.int64), "box": torch.zeros(2, s, s, dtype=torch.int64)}
    for _ in range(2):
        train_step(state, bl, bu)
        missing = [n for n, p in state.model.named_parameters() if p.requires_grad and p.grad is None]
        assert missing == []


def test_syncbn_conversion_roundtrip_keeps_state_keys() -> None:
    """SyncBN (what wrap_model applies on CUDA) has the same state-dict keys as BN, so checkpoints interchange."""
    from npsemiseg.models.build import convert_syncbn_to_bn

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    assert isinstance(synced[1], nn.SyncBatchNorm)
    assert set(synced.state_dict()) == set(net.state_dict())
    back = convert_syncbn_to_bn(synced)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in back.modules())
    assert isinstance(back[1], nn.BatchNorm2d)


def test_strip_module_prefix_and_clean_checkpoint() -> None:
    ddp_like = {"module.a.weight": torch.ones(1), "module.b": torch.zeros(2)}
    assert list(strip_module_prefix(ddp_like)) == ["a.weight", "b"]
    plain = {"a.weight": torch.ones(1)}
    assert strip_module_prefix(plain) is plain
    ckpt = {"model": ddp_like, "teacher": plain, "step": 3, "optimizer": {"state": {}}}
    out = clean_checkpoint(ckpt)
    assert list(out["model"]) == ["a.weight", "b"] and out["teacher"] is plain and out["step"] == 3
    assert list(ckpt["model"]) == ["module.a.weight", "module.b"]  # input untouched


def test_scalar_metrics_converts_tensors() -> None:
    import numpy as np

    out = scalar_metrics({"a": torch.tensor(0.5), "b": np.float32(2.0), "c": 3, "d": "x", "e": torch.tensor([1, 2])})
    assert out == {"a": 0.5, "b": 2.0, "c": 3, "d": "x", "e": [1, 2]}
    assert all(not isinstance(v, torch.Tensor) for v in out.values())


def test_fault_injector_fires_once_with_marker(tmp_path) -> None:
    """Outside Ray the marker falls back to out_dir; a second injector (a restarted worker) does not fire."""
    first = FaultInjector(3, rank=1, world_size=2, out_dir=str(tmp_path))
    first.maybe_fail(2)  # before the step: nothing
    with pytest.raises(RuntimeError, match=f"{FAIL_AT_STEP_ENV}=3"):
        first.maybe_fail(4)  # first report at or after step 3
    marker = tmp_path / "fault_injected_step3"
    assert marker.is_file() and "step=4" in marker.read_text()
    restarted = FaultInjector(3, rank=1, world_size=2, out_dir=str(tmp_path))
    restarted.maybe_fail(4)
    restarted.maybe_fail(6)
    FaultInjector(3, rank=0, world_size=2, out_dir=str(tmp_path / "other")).maybe_fail(5)  # not the failing rank
    FaultInjector(-1, rank=0, world_size=1, out_dir=str(tmp_path / "off")).maybe_fail(10)  # disabled
    assert not (tmp_path / "other").exists() and not (tmp_path / "off").exists()


def test_fault_step_comes_from_the_environment_only(monkeypatch, tmp_path) -> None:
    """Not a user setting: no config key; the driver reads NPSEMISEG_FAIL_AT_STEP and hands it to the workers."""
    from npsemiseg.config import config_from_dict
    from npsemiseg.distributed.trainer import build_trainer
    from npsemiseg.errors import UserError

    assert not hasattr(Config().train, "fail_at_step")
    old = Config().to_dict()
    old["train"]["fail_at_step"] = -1  # what checkpoints and exports of earlier versions hold: still loads
    assert config_from_dict(old) == Config()
    monkeypatch.delenv(FAIL_AT_STEP_ENV, raising=False)
    assert fail_at_step_from_env() == -1
    kw = {"num_workers": 1, "use_gpu": False, "storage_path": str(tmp_path), "name": "x"}
    assert "fail_at_step" not in build_trainer(Config(), **kw).train_loop_config
    monkeypatch.setenv(FAIL_AT_STEP_ENV, "3")
    assert fail_at_step_from_env() == 3
    assert build_trainer(Config(), **kw).train_loop_config["fail_at_step"] == 3
    monkeypatch.setenv(FAIL_AT_STEP_ENV, "three")
    with pytest.raises(UserError, match=FAIL_AT_STEP_ENV):
        fail_at_step_from_env()


def test_build_trainer_configuration(tmp_path) -> None:
    from npsemiseg.distributed.trainer import ReportLog, build_trainer
    from npsemiseg.errors import UserError

    cfg = apply_overrides(Config(), {"out_dir": "relative/run", "model.latent_dim": 16})
    cb = ReportLog(tmp_path / "log.jsonl")
    trainer = build_trainer(cfg, num_workers=3, use_gpu=False, storage_path=str(tmp_path / "store"), name="exp/t1",
                            callbacks=[cb], max_failures=2, resources_per_worker={"CPU": 2}, num_to_keep=3)
    run = trainer.run_config
    assert run.name == "exp/t1" and run.storage_path == str(tmp_path / "store")
    assert run.failure_config.max_failures == 2 and run.callbacks == [cb]
    ck = run.checkpoint_config
    assert (ck.num_to_keep, ck.checkpoint_score_attribute, ck.checkpoint_score_order) == (3, "val/miou", "max")
    sc = trainer.scaling_config
    assert (sc.num_workers, sc.use_gpu, sc.resources_per_worker) == (3, False, {"CPU": 2})
    assert trainer.backend_config.backend == "gloo"
    sent = trainer.train_loop_config["cfg"]
    assert os.path.isabs(sent["out_dir"]) and sent["out_dir"].endswith("relative/run")
    assert sent["model"] == cfg.to_dict()["model"]
    uri = build_trainer(cfg, num_workers=1, use_gpu=False, storage_path="s3://bucket/runs", name="x")
    assert uri.run_config.storage_path == "s3://bucket/runs"
    with pytest.raises(UserError, match="num-workers"):
        build_trainer(cfg, num_workers=0, use_gpu=False, storage_path=None, name="x")
    with pytest.raises(UserError, match="device"):
        build_trainer(apply_overrides(cfg, {"device": "cpu"}), num_workers=1, use_gpu=True, storage_path=None,
                      name="x")


def test_cluster_address(monkeypatch) -> None:
    """RAY_ADDRESS wins; otherwise only a live `ray start` cluster (address file + running GCS) is joined."""
    from npsemiseg.distributed.connect import cluster_address

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert cluster_address() == "auto"
    monkeypatch.delenv("RAY_ADDRESS")
    svc = "ray._private.services"
    monkeypatch.setattr(f"{svc}.find_bootstrap_address", lambda temp_dir: "127.0.0.1:6379")
    monkeypatch.setattr(f"{svc}.find_gcs_addresses", lambda: set())  # stale address file: dead cluster
    assert cluster_address() == "local"
    monkeypatch.setattr(f"{svc}.find_gcs_addresses", lambda: {"127.0.0.1:6379", "127.0.0.1:7000"})
    assert cluster_address() == "127.0.0.1:6379"
    monkeypatch.setattr(f"{svc}.find_bootstrap_address", lambda temp_dir: None)  # only private ray.init()s
    assert cluster_address() == "local"


def test_connect_policy_without_starting_ray(monkeypatch) -> None:
    """One policy for train and sweeps: explicit address / RAY_ADDRESS, then (if allowed) a live local cluster,
    else a fresh local instance started with its GCS address pinned in the environment."""
    import ray

    from npsemiseg.distributed import connect as c

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append({**kw, "env": os.environ.get("RAY_ADDRESS")}))
    monkeypatch.setattr(c, "dashboard_url", lambda: "http://127.0.0.1:8265")
    monkeypatch.setattr(c, "cluster_address", lambda: "10.0.0.5:6379")  # a live `ray start` cluster here
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert c.connect(join_local_cluster=True) == "http://127.0.0.1:8265"
    assert calls[-1]["address"] == "10.0.0.5:6379"  # train: joins it
    c.connect(join_local_cluster=False, num_cpus=4, log_to_driver=False)  # the CPU demo sweep: never
    last = calls[-1]
    assert (last["address"], last["num_cpus"], last["include_dashboard"], last["dashboard_host"]) == (
        "local", 4, True, "127.0.0.1")
    assert last["env"] and last["log_to_driver"] is False and "RAY_ADDRESS" not in os.environ  # pinned, restored
    monkeypatch.setenv("RAY_ADDRESS", "1.2.3.4:6379")
    c.connect(join_local_cluster=False)
    assert calls[-1]["address"] == "1.2.3.4:6379"
    c.connect("ray://head:10001")
    assert calls[-1]["address"] == "ray://head:10001"
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    n = len(calls)
    c.connect("ray://other:10001")
    assert len(calls) == n  # already connected: kept


def test_absolute_paths_for_workers(tmp_path, monkeypatch) -> None:
    from npsemiseg.distributed.trainer import absolute_paths

    monkeypatch.chdir(tmp_path)
    cfg = apply_overrides(Config(), {"out_dir": "runs/x", "data.root": "demo_data/voc", "data.split_dir": "",
                                     "model.pretrained": "torchvision"})
    out = absolute_paths(cfg)
    assert out.out_dir == str(tmp_path / "runs/x") and out.data.root == str(tmp_path / "demo_data/voc")
    assert out.data.split_dir == "" and out.model.pretrained == "torchvision"
    uri = apply_overrides(Config(), {"out_dir": "s3://bucket/run", "data.root": "/abs/voc"})
    assert absolute_paths(uri).out_dir == "s3://bucket/run" and absolute_paths(uri).data.root == "/abs/voc"


def test_user_error_found_behind_worker_failure() -> None:
    """A UserError raised in a worker reaches the CLI as a one-line UserError (exit 2), not a traceback."""
    from ray.train.v2.api.exceptions import WorkerGroupError

    from npsemiseg.distributed.launch import user_error_in
    from npsemiseg.errors import UserError

    original = UserError("demo_data/voc: data root not found (data.root)")
    wrapped = RuntimeError("RayTaskError(UserError): traceback ...")
    wrapped.cause = original  # what Ray's task errors carry
    err = WorkerGroupError("Training failed due to worker errors", {1: wrapped})
    assert user_error_in(err) is original
    assert user_error_in(WorkerGroupError("boom", {0: RuntimeError("bug")})) is None


# --------------------------------------------------------------------------- all_gather_rows on real gloo
def _bare_context(rank: int, world: int) -> RayContext:
    """A RayContext with only the collective state (no Ray Train session needed for the collectives)."""
    ctx = RayContext.__new__(RayContext)
    ctx.rank, ctx.world_size, ctx.device, ctx.distributed = rank, world, torch.device("cpu"), True
    return ctx


def _gather_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    ctx = _bare_context(rank, world)
    n = [3, 5][rank]  # uneven
    rows = torch.arange(n * 4, dtype=torch.float32).view(n, 4) + 100 * rank
    labels = torch.full((n,), rank, dtype=torch.int64)
    empty = torch.zeros(0, 4)
    one_empty = torch.ones(2 * rank, 3)  # rank 0 has no rows
    total = ctx.all_reduce_sum(torch.tensor([float(rank + 1), 1.0]))
    torch.save(
        {"rows": ctx.all_gather_rows(rows), "labels": ctx.all_gather_rows(labels),
         "empty": ctx.all_gather_rows(empty), "one_empty": ctx.all_gather_rows(one_empty), "sum": total},
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    dist.destroy_process_group()


def test_all_gather_rows_variable_length_gloo(tmp_path) -> None:
    world = 2
    mp.spawn(_gather_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    expected_rows = torch.cat([torch.arange(12.0).view(3, 4), torch.arange(20.0).view(5, 4) + 100])
    expected_labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])
    for r in range(world):
        got = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert torch.equal(got["rows"], expected_rows)
        assert torch.equal(got["labels"], expected_labels) and got["labels"].dtype == torch.int64
        assert got["empty"].shape == (0, 4)
        assert torch.equal(got["one_empty"], torch.ones(2, 3))
        assert got["sum"].tolist() == [3.0, 2.0]
