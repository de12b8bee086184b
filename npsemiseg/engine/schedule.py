"""SGD with two parameter groups (backbone lr, decoder + head lr x head_lr_mult), a per-iteration poly LR, and
the per-step schedules of the unsupervised term (weight ramp-up, confidence-threshold ramp)."""
from __future__ import annotations

import math

from torch import nn
from torch.optim import SGD, Optimizer
from torch.optim.lr_scheduler import LRScheduler

from npsemiseg.config import TrainConfig


def param_groups(model: nn.Module, lr: float, head_lr_mult: float) -> list[dict]:
    """Backbone parameters at ``lr``, everything else (decoder, head) at ``lr * head_lr_mult``.

    The split comes from ``model.param_groups()`` (SegModel: ResNet trunk vs the rest) when the model has it,
    else every parameter named ``backbone.*`` or ``*.backbone.*`` is backbone.
    """
    if callable(getattr(model, "param_groups", None)):
        bb_ids = {id(p) for p in model.param_groups()[0]}
    else:
        bb_ids = {id(p) for n, p in model.named_parameters() if n.startswith("backbone.") or ".backbone." in n}
    bb = [p for p in model.parameters() if id(p) in bb_ids and p.requires_grad]
    rest = [p for p in model.parameters() if id(p) not in bb_ids and p.requires_grad]
    groups = [{"params": bb, "lr": lr, "name": "backbone"}, {"params": rest, "lr": lr * head_lr_mult, "name": "head"}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, tcfg: TrainConfig) -> SGD:
    """SGD with momentum and weight decay over the two parameter groups."""
    return SGD(
        param_groups(model, tcfg.lr, tcfg.head_lr_mult),
        lr=tcfg.lr,
        momentum=tcfg.momentum,
        weight_decay=tcfg.weight_decay,
    )


class PolyLR(LRScheduler):
    """lr_i = base_lr * (1 - i / total) ** power, stepped once per iteration (state_dict is plain numbers)."""

    def __init__(self, optimizer: Optimizer, total_iters: int, power: float = 0.9, last_epoch: int = -1) -> None:
        self.total_iters = max(int(total_iters), 1)
        self.power = float(power)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        frac = min(self.last_epoch, self.total_iters) / self.total_iters
        factor = (1.0 - frac) ** self.power
        return [base * factor for base in self.base_lrs]


def ramp_factor(step: int, ramp_steps: int) -> float:
    """Sigmoid-shaped ramp-up exp(-5 (1 - s/R)^2) for step s < R, 1 afterwards (1 always when R <= 0).

    The mean-teacher ramp (Laine & Aila 2017): 0.0067 at step 0, 0.29 at R/2, 1 from step R on.
    """
    if ramp_steps <= 0 or step >= ramp_steps:
        return 1.0
    frac = max(step, 0) / ramp_steps
    return math.exp(-5.0 * (1.0 - frac) ** 2)


def unsup_weight_at(step: int, tcfg: TrainConfig) -> float:
    """Effective weight of the unsupervised term at ``step``: ``unsup_weight`` x the ramp-up factor."""
    return tcfg.unsup_weight * ramp_factor(step, tcfg.unsup_ramp)


def threshold_at(step: int, tcfg: TrainConfig) -> float:
    """Confidence threshold at ``step``: linear from ``conf_threshold_start`` to ``conf_threshold`` over
    ``threshold_ramp`` steps (constant ``conf_threshold`` when the ramp is 0 or the start is negative)."""
    start, end, ramp = tcfg.conf_threshold_start, tcfg.conf_threshold, tcfg.threshold_ramp
    if ramp <= 0 or start < 0 or step >= ramp:
        return end
    return start + (end - start) * max(step, 0) / ramp
