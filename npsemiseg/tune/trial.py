"""The Tune trial function: one sweep trial = one Ray Train run (Train V2 pattern).

Tune calls ``run_trial(config, spec=...)`` with the sampled hyper-parameters as flat dotted keys, the trial's split
among them (``data.split``, set by the searcher). It turns them into a ``Config`` (base recipe + proxy overrides +
sampled values), builds ``build_trainer(cfg, ...)`` with a ``TuneReportCallback`` so every Train report reaches
Tune (the scheduler and the searcher), and fits it. The Train run's name is stable, ``<experiment>/<trial_id>``,
so when a killed sweep is restored the same trial finds its own checkpoints and continues from them.

Each Train worker runs ``npsemiseg.tune.worker.timed_train_loop`` (the one training loop, timed). This module stays
light (no torch at import): Tune imports it in every new trial actor.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from npsemiseg.config import apply_overrides, config_from_dict
from npsemiseg.tune.resources import TrialResources


@dataclass(frozen=True)
class TrialSpec:
    """Everything a trial needs besides the sampled values (pickled once per sweep by ``tune.with_parameters``)."""

    base: dict[str, Any]  # Config.to_dict() of the recipe + proxy overrides + user overrides
    experiment: str
    storage_root: str  # Train runs land in <storage_root>/<experiment>/<trial_id>
    resources: TrialResources = field(default_factory=TrialResources)
    num_to_keep: int = 2
    # Test seam: a callable with build_trainer's signature; None = npsemiseg.distributed.trainer.build_trainer.
    trainer_factory: Callable[..., Any] | None = None


def train_run_name(experiment: str, trial_id: str) -> str:
    """The stable inner Train run name of a trial."""
    return f"{experiment}/{trial_id}"


def trial_config(spec: TrialSpec, params: dict[str, Any], trial_id: str, out_dir: str) -> Any:
    """The validated ``Config`` one trial trains with (``params`` include ``data.split``)."""
    over = dict(params)
    over["name"] = train_run_name(spec.experiment, trial_id)
    over["out_dir"] = out_dir
    if not spec.resources.use_gpu:
        over["device"] = "cpu"
    return apply_overrides(config_from_dict(spec.base), over)


def run_trial(config: dict[str, Any], spec: TrialSpec) -> None:
    """Tune function trainable: build the trial's TorchTrainer, forward its reports to Tune, fit it."""
    from ray import tune  # [1] the trial's identity and folder come from Tune's context
    from ray.tune.integration.ray_train import TuneReportCallback  # [2] Train reports -> Tune results

    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    cfg = trial_config(spec, config, trial_id, ctx.get_trial_dir())
    from npsemiseg.tune.tensorboard import trial_tensorboard
    from npsemiseg.tune.worker import timed_train_loop

    factory = spec.trainer_factory
    if factory is None:
        from npsemiseg.distributed.trainer import build_trainer as factory
    res = spec.resources
    # HParams (split + sampled values) in the trial's tb/ folder; with URI storage rank 0 mirrors its events there
    tb_kw = trial_tensorboard(spec.storage_root, spec.experiment, config, ctx.get_trial_dir())
    trainer = factory(
        cfg,
        num_workers=res.workers,
        use_gpu=res.use_gpu,
        storage_path=spec.storage_root,
        name=train_run_name(spec.experiment, trial_id),  # [3] stable name: a restored trial finds its checkpoints
        callbacks=[TuneReportCallback()],
        max_failures=0,  # retries are counted once, by the Tuner's FailureConfig (--max-failures), never compounded
        resources_per_worker=res.per_worker(),
        num_to_keep=spec.num_to_keep,
        train_fn=timed_train_loop,
        **tb_kw,
    )
    trainer.fit()  # [4] blocks until the Train run ends; Tune stops this function when its scheduler says STOP
