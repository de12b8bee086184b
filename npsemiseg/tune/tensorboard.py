"""TensorBoard for sweeps: one run per trial, in the trial's storage folder, with the split and sampled values as
HParams.

    tensorboard --logdir <storage-path>/<experiment>        # local or NFS storage
    tensorboard --logdir s3://BUCKET/npsemiseg/voc_search   # S3 (TensorBoard reads s3:// with boto3 installed)

Each trial's run is ``<storage>/<experiment>/tune/trial_<id>/tb`` (the trial's folder in the sweep's one Tune
experiment): rank 0 of the trial's Train run writes its scalars there (keyed by training step; on a cluster a thread
mirrors them from the GPU node), and the trial function adds one HParams event file to the same folder, so the
HParams tab lists every trial with its split.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from npsemiseg.tune.common import SPLIT_KEY, TUNE_DIR

HPARAM_METRICS = ("val/miou", "val/ece", "val/err_auroc")


def _plain(v: Any) -> Any:
    if isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def write_hparams(log_dir: str | Path, split: str, params: dict[str, Any]) -> Path:
    """Write the HParams summaries (split + sampled values, metrics declared) into ``log_dir``; returns it."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    hp = {"split": split, **{k: _plain(v) for k, v in sorted(params.items())}}
    exp, ssi, sei = hparams(hp, {m: float("nan") for m in HPARAM_METRICS})
    log_dir = Path(log_dir)
    w = SummaryWriter(log_dir=str(log_dir), filename_suffix=".hparams")
    for s in (exp, ssi, sei):
        w.file_writer.add_summary(s)
    w.close()
    return log_dir


def tensorboard_dest(storage_root: str, experiment: str, trial_dir: str) -> str:
    """``<storage>/<experiment>/tune/trial_<id>/tb`` for the trial whose local folder is ``trial_dir``."""
    return f"{storage_root.rstrip('/')}/{experiment}/{TUNE_DIR}/{Path(trial_dir).name}/tb"


def trial_tensorboard(storage_root: str, experiment: str, config: dict[str, Any], trial_dir: str) -> dict[str, Any]:
    """In a trial function: write the HParams (the split from ``config[data.split]``, the sampled values) into
    ``<trial_dir>/tb``; with URI storage mirror it to the trial's storage folder and return
    ``{"tensorboard_uri": ...}`` for ``build_trainer`` (rank 0 mirrors its event files there too)."""
    params = {k: v for k, v in config.items() if k != SPLIT_KEY}
    local = write_hparams(Path(trial_dir) / "tb", str(config.get(SPLIT_KEY, "")), params)
    if "://" not in storage_root:
        return {}  # the trial folder is already in the storage
    from npsemiseg.storage import Storage

    dest = tensorboard_dest(storage_root, experiment, trial_dir)
    Storage(dest).put_tree(local)
    return {"tensorboard_uri": dest}
