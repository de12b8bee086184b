"""The Tune trial function: one sweep trial = one Ray Train run (Train V2 pattern).

Tune calls ``run_trial(config, spec=...)`` with the sampled hyper-parameters as flat dotted keys. It turns them into
a ``Config`` (base recipe + proxy overrides + sampled values), builds ``build_trainer(cfg, ...)`` with a
``TuneReportCallback`` so every Train report reaches Tune (and ASHA / Optuna), and fits it. The Train run's name is
stable, ``<experiment>/<trial_id>``, so when a killed sweep is restored the same trial finds its own checkpoints
and continues from them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from npsemiseg.config import apply_overrides, config_from_dict
from npsemiseg.tune.resources import TrialResources


@dataclass(frozen=True)
class TrialSpec:
    """Everything a trial needs besides the sampled values (pickled once per split by ``tune.with_parameters``)."""

    base: dict[str, Any]  # Config.to_dict() of the recipe + proxy overrides + user overrides
    split: str
    experiment: str
    storage_root: str  # Train runs land in <storage_root>/<experiment>/<trial_id>
    resources: TrialResources = field(default_factory=TrialResources)
    num_to_keep: int = 2
    max_failures: int = 0
    # Test seam: a callable with build_trainer's signature; None = npsemiseg.distributed.trainer.build_trainer.
    trainer_factory: Callable[..., Any] | None = None


def train_run_name(experiment: str, trial_id: str) -> str:
    """The stable inner Train run name of a trial."""
    return f"{experiment}/{trial_id}"


def trial_config(spec: TrialSpec, params: dict[str, Any], trial_id: str, out_dir: str) -> Any:
    """The validated ``Config`` one trial trains with."""
    cfg = config_from_dict(spec.base)
    over = dict(params)
    over["data.split"] = spec.split
    over["name"] = train_run_name(spec.experiment, trial_id)
    over["out_dir"] = out_dir
    if not spec.resources.use_gpu:
        over["device"] = "cpu"
    return apply_overrides(cfg, over)


def run_trial(config: dict[str, Any], spec: TrialSpec) -> None:
    """Tune function trainable: build the trial's TorchTrainer, forward its reports to Tune, fit it."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    cfg = trial_config(spec, config, trial_id, ctx.get_trial_dir())
    factory = spec.trainer_factory
    if factory is None:
        from npsemiseg.distributed.trainer import build_trainer as factory
    res = spec.resources
    from npsemiseg.tune.tensorboard import trial_tensorboard  # cluster-hook

    tb_kw = trial_tensorboard(spec.storage_root, spec.experiment, spec.split, config,  # cluster-hook: HParams,
                              ctx.get_trial_dir())  # cluster-hook: rank 0's event files -> trial storage
    trainer = factory(
        cfg,
        num_workers=res.workers,
        use_gpu=res.use_gpu,
        storage_path=spec.storage_root,
        name=train_run_name(spec.experiment, trial_id),
        callbacks=[TuneReportCallback()],
        max_failures=0,  # cluster-hook: retries are counted once, by the Tuner's FailureConfig (spec.max_failures)
        resources_per_worker=res.per_worker(),
        num_to_keep=spec.num_to_keep,
        **tb_kw,  # cluster-hook
    )
    trainer.fit()

