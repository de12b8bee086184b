"""Ray Train end to end on 2 CPU workers (gloo) with the tiny synthetic data, sharing one Ray session.

- a run completes, reports val/miou and leaves checkpoints that load with weights_only=True into a plain model;
- an injected worker fault restarts the group from the last checkpoint and the reported steps neither skip nor
  repeat;
- after a step the memory banks are identical on both ranks and equal to one process fed the global batch;
- a UserError raised in a worker ends `npsemiseg train --num-workers 2` with exit code 2 and one line.
"""
from __future__ import annotations

import contextlib
import io
import math
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from npsemiseg.config import Config, apply_overrides, config_from_dict
from npsemiseg.distributed.context import CHECKPOINT_FILE, FAIL_AT_STEP_ENV, RayContext
from npsemiseg.distributed.trainer import build_trainer, read_report_log
from npsemiseg.engine.context import RunContext

pytestmark = [pytest.mark.ray, pytest.mark.slow]

BANK_BUFFERS = ("context_bank", "target_bank")


@pytest.fixture(scope="module", autouse=True)
def _ship_this_module_by_value():
    """Worker processes cannot import this test module: pickle its functions and classes by value."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _steps(log: list[dict[str, Any]]) -> list[int]:
    return [r["metrics"]["step"] for r in log if r["event"] == "report"]


def _load_plain(cfg: Config, ckpt: dict[str, Any], key: str) -> nn.Module:
    from npsemiseg.models import build_model

    model = build_model(cfg.model, ckpt.get("num_classes", cfg.num_classes()))
    model.load_state_dict(ckpt[key], strict=True)
    return model


@pytest.fixture(scope="module")
def faulty_run(ray_session, demo_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """``run_distributed`` (what ``npsemiseg train --num-workers 2`` calls): 6 steps, a report every 2, rank 1
    fails once at step 3, max_failures=1."""
    from conftest import TINY_OVERRIDES

    from npsemiseg.distributed.launch import run_distributed

    tmp = tmp_path_factory.mktemp("faulty")
    over = dict(TINY_OVERRIDES, **{"data.root": str(demo_root / "voc"), "out_dir": str(tmp / "run"),
                                   "device": "cpu", "name": "faulty", "train.iters": 6, "train.eval_every": 2})
    cfg = apply_overrides(Config(), over)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.MonkeyPatch.context() as mp:
        mp.setenv(FAIL_AT_STEP_ENV, "3")
        metrics = run_distributed(cfg, num_workers=2, use_gpu=False, storage_path=str(tmp / "store"),
                                  max_failures=1)
    run_dir = tmp / "store" / "faulty"
    return {"cfg": cfg, "metrics": metrics, "printed": printed.getvalue(), "run_dir": run_dir,
            "log": read_report_log(tmp / "run" / "ray_reports.jsonl"),
            "checkpoints": sorted(run_dir.glob("checkpoint_step*"))}


def test_two_workers_complete_and_checkpoint_loads_into_plain_model(faulty_run):
    cfg, metrics = faulty_run["cfg"], faulty_run["metrics"]
    miou = metrics["val/miou"]
    assert 0.0 <= miou <= 1.0 and not math.isnan(miou)
    assert metrics["step"] == 6
    assert f"val/miou={miou:.4f}" in faulty_run["printed"]
    latest = faulty_run["checkpoints"][-1]
    assert latest.name.startswith("checkpoint_step00000006") and f"latest checkpoint: {latest}" in faulty_run["printed"]
    # num_to_keep=2 by val/miou, the latest always kept: 2 or 3 of the 3 reported checkpoints remain
    assert 2 <= len(faulty_run["checkpoints"]) <= 3

    ckpt = torch.load(latest / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    assert ckpt["step"] == 6 and ckpt["metrics"]["val/miou"] == pytest.approx(miou)
    for key in ("model", "teacher"):
        assert not any(k.startswith("module.") for k in ckpt[key])
        plain = _load_plain(cfg, ckpt, key)  # strict load into a plain, non-DDP model
        assert not isinstance(plain, nn.parallel.DistributedDataParallel)
    # the banks travelled in the checkpoint, and rank 1's RNG snapshot differs from rank 0's
    counts = [v for k, v in ckpt["model"].items() if k.endswith("_bank.count")]
    assert len(counts) == 2 and all(int(c.sum()) > 0 for c in counts)
    per_rank = ckpt["rng_per_rank"]
    assert len(per_rank) == 2 and not torch.equal(per_rank[0]["torch"], per_rank[1]["torch"])


def test_fault_injection_restarts_from_checkpoint_without_step_gaps(faulty_run):
    log = faulty_run["log"]
    assert [r["event"] for r in log] == ["report", "failure", "report", "report"]
    failure = log[1]["errors"]
    assert list(failure) == ["1"] and f"{FAIL_AT_STEP_ENV}=3" in failure["1"]  # rank 1 raised, once
    assert _steps(log) == [2, 4, 6]  # resumed from step 2's checkpoint: step 4 comes once, nothing repeats
    assert all(r["checkpoint"] for r in log if r["event"] == "report")  # every report carried one
    assert (faulty_run["run_dir"] / "fault_injected_step3").is_file()


# --------------------------------------------------------------------------- bank synchronisation
def _freeze_bn(model: nn.Module) -> nn.Module:
    """BatchNorm in eval mode for good (``.train()`` no longer flips it): per-rank batch statistics would
    otherwise differ from the global batch's and hide what the test looks at."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            m.train = types.MethodType(lambda self, mode=True: self, m)
    return model


class _FrozenBNRayContext(RayContext):
    def wrap_model(self, model: nn.Module) -> nn.Module:
        return super().wrap_model(_freeze_bn(model))


class _FrozenBNLocal(RunContext):
    def wrap_model(self, model: nn.Module) -> nn.Module:
        return _freeze_bn(model)


def _bank_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            if k.split(".")[-2] in BANK_BUFFERS}


def _shard(batch: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    n = next(iter(batch.values())).shape[0] // world
    return {k: v[rank * n:(rank + 1) * n] for k, v in batch.items()}


def _bank_worker(config: dict[str, Any]) -> None:
    """Each rank steps on its shard of a fixed global batch; saves student and teacher banks."""
    from npsemiseg.engine.checkpoint import seed_everything
    from npsemiseg.engine.step import build_state, train_step

    batches = torch.load(config["batch_file"], weights_only=True)
    out: dict[str, Any] = {}
    for mode, steps in (("semi", 2), ("sup", 1)):
        cfg = config_from_dict(config["cfg"])
        cfg = apply_overrides(cfg, {"train.semi": mode == "semi"})
        ctx = _FrozenBNRayContext(cfg)
        seed_everything(cfg.seed)
        state = build_state(cfg, ctx, num_classes=config["num_classes"])
        r, w = ctx.rank, ctx.world_size
        for i in range(steps):
            bu = _shard(batches[f"u{i}"], r, w) if mode == "semi" else None
            train_step(state, _shard(batches[f"l{i}"], r, w), bu)
        out[mode] = {"student": _bank_state(state.model), "teacher": _bank_state(state.teacher)}
    torch.save(out, Path(config["out_dir"]) / f"banks_rank{ctx.rank}.pt")


def _global_batches(cfg: Config, world: int) -> tuple[dict[str, dict[str, torch.Tensor]], int]:
    from npsemiseg.data import build_datasets

    data = build_datasets(cfg)
    torch.manual_seed(0)
    nl, nu = cfg.data.batch_size_l * world, cfg.data.batch_size_u * world
    out = {}
    for i in range(2):
        li = torch.randint(len(data.labelled), (nl,)).tolist()
        ui = torch.randint(len(data.unlabelled), (nu,)).tolist()
        items_l = [data.labelled[j] for j in li]
        items_u = [data.unlabelled[j] for j in ui]
        out[f"l{i}"] = {k: torch.stack([it[k] for it in items_l]) for k in ("image", "mask")}
        out[f"u{i}"] = {k: torch.stack([it[k] for it in items_u]) for k in ("image_w", "image_s", "ignore", "box")}
    return out, data.num_classes


def test_banks_identical_across_ranks_and_equal_to_single_process(ray_session, tiny_cfg: Config, tmp_path):
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from npsemiseg.engine.checkpoint import seed_everything
    from npsemiseg.engine.step import build_state, train_step

    world = 2
    # K large enough that the per-step random row draw keeps every row: one process's draw over the global batch
    # and two ranks' draws over their halves can then be compared row for row
    tiny_cfg = apply_overrides(tiny_cfg, {"model.bank_capacity": 4096})
    batches, num_classes = _global_batches(tiny_cfg, world)
    torch.save(batches, tmp_path / "batches.pt")
    trainer = TorchTrainer(
        _bank_worker,
        train_loop_config={"cfg": tiny_cfg.to_dict(), "batch_file": str(tmp_path / "batches.pt"),
                           "out_dir": str(tmp_path), "num_classes": num_classes},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=world, use_gpu=False),
        run_config=build_trainer(tiny_cfg, num_workers=world, use_gpu=False, storage_path=str(tmp_path / "s"),
                                 name="banks").run_config,
    )
    trainer.fit()
    ranks = [torch.load(tmp_path / f"banks_rank{r}.pt", weights_only=True) for r in range(world)]

    # 1) identical on every rank, student and teacher, after semi-supervised and supervised steps
    for mode in ("semi", "sup"):
        ref = ranks[0][mode]["student"]
        assert ref and all(int(v.sum()) > 0 for k, v in ref.items() if k.endswith("count"))
        for r in range(world):
            for who in ("student", "teacher"):
                got = ranks[r][mode][who]
                assert got.keys() == ref.keys()
                for k in ref:
                    assert torch.equal(got[k], ref[k]), (mode, r, who, k)

    # 2) equal to one process fed the global batch (BN frozen; one step, before any weight divergence)
    cfg = apply_overrides(tiny_cfg, {"train.semi": False})
    seed_everything(cfg.seed)
    state = build_state(cfg, _FrozenBNLocal(cfg.device), num_classes=num_classes)
    train_step(state, batches["l0"], None)
    single = _bank_state(state.model)
    dist_banks = ranks[0]["sup"]["student"]
    for k, v in single.items():
        if v.dtype.is_floating_point:
            torch.testing.assert_close(dist_banks[k], v, atol=1e-5, rtol=1e-4)
        else:
            assert torch.equal(dist_banks[k], v), k
    # and not what one rank's half of the batch alone would give
    half = _bank_state(_one_rank_alone(cfg, batches["l0"], world, num_classes))
    assert any(not torch.equal(half[k], v) for k, v in single.items() if k.endswith("count"))


def _one_rank_alone(cfg: Config, batch_l: dict[str, torch.Tensor], world: int, num_classes: int) -> nn.Module:
    from npsemiseg.engine.checkpoint import seed_everything
    from npsemiseg.engine.step import build_state, train_step

    seed_everything(cfg.seed)
    state = build_state(cfg, _FrozenBNLocal(cfg.device), num_classes=num_classes)
    train_step(state, _shard(batch_l, 0, world), None)
    return state.model


def test_cli_worker_user_error_exits_2_with_one_line(ray_session, tiny_cfg: Config, tmp_path, capsys):
    """`npsemiseg train --num-workers 2` with a bad data root: the worker's UserError becomes exit 2, one line."""
    from npsemiseg.cli import main

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(tiny_cfg.to_yaml())
    code = main(["train", "--config", str(recipe), "--num-workers", "2", "--storage-path", str(tmp_path / "s"),
                 f"data.root={tmp_path / 'missing'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == f"npsemiseg: error: {tmp_path / 'missing'}: data root not found (data.root)"
