"""Mean-teacher EMA: teacher = exponential moving average of the student (docs/method.md §4)."""
from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of the (unwrapped) student, in eval mode."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def ema_decay(step: int, max_decay: float) -> float:
    """Ramped decay min(1 - 1/(step+1), max_decay): 0 at step 0 (teacher := student), then up to max_decay."""
    return min(1.0 - 1.0 / (step + 1), max_decay)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student for parameters and floating buffers (BN statistics);
    integer buffers (counters) are copied. Memory banks are copied separately with ``copy_banks_``."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.lerp_(s.detach(), 1.0 - decay)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        if t.dtype.is_floating_point:
            t.lerp_(s.detach(), 1.0 - decay)
        else:
            t.copy_(s)
