"""SGD with two parameter groups (backbone lr, decoder + head lr x head_lr_mult) and a per-iteration poly LR."""
from __future__ import annotations

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
