"""Shared fixtures: tiny synthetic data, a tiny config on it, one Ray session per pytest session."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from npsemiseg.config import Config, apply_overrides

TINY_OVERRIDES = {
    "data.dataset": "voc",
    "data.split": "demo/1_4",
    "data.crop_size": 64,
    "data.batch_size_l": 2,
    "data.batch_size_u": 2,
    "data.num_workers": 0,
    "data.val_limit": 4,
    "model.backbone": "resnet18",
    "model.width": 8,
    "model.output_stride": 16,
    "model.aspp_channels": 32,
    "model.latent_dim": 8,
    "model.bank_capacity": 64,
    "model.t_train": 2,
    "model.t_eval": 4,
    "train.iters": 4,
    "train.eval_every": 2,
    "train.log_every": 1,
    "train.lr": 0.01,
    "train.conf_threshold": 0.5,
}


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny models single-threaded: they gain nothing from intra-op threads, and on a busy
    2-core machine two threads fighting each other made them up to 10x slower."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny synthetic VOC + Cityscapes trees (generated once per session)."""
    from npsemiseg.data.synthetic import make_demo_data

    root = tmp_path_factory.mktemp("demo_data")
    make_demo_data(root, scale="tiny", seed=0)
    return root


@pytest.fixture
def tiny_cfg(demo_root: Path, tmp_path: Path) -> Config:
    """A Config for a tiny ResNet-18 (width 8) on the tiny demo VOC tree, writing under tmp_path."""
    over = dict(TINY_OVERRIDES)
    over["data.root"] = str(demo_root / "voc")
    over["out_dir"] = str(tmp_path / "run")
    over["device"] = "cpu"
    return apply_overrides(Config(), over)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (start-up costs ~10-20 s; never start two)."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    temp_dir = tempfile.mkdtemp(prefix="npss_ray_", dir="/tmp")
    # A pinned GCS port keeps Ray Train's clean-up threads attached to THIS instance even while a test runs a
    # second Ray instance in a subprocess (fake cluster, SIGKILL/resume sweep); see distributed/connect.py.
    from npsemiseg.distributed.connect import pinned_local_address

    with pinned_local_address():
        ray.init(
            address="local",
            num_cpus=4,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            _temp_dir=temp_dir,
            configure_logging=False,
            log_to_driver=False,
        )
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
