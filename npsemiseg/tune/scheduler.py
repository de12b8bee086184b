"""Early stopping for a sweep whose splits share one Tuner: asynchronous successive halving per split.

Rungs at ``grace * rf^k`` (< the budget), as in ASHA (Li et al. 2018, the rule of Ray's ``ASHAScheduler``): a trial
reaching a rung is stopped when it is below the ``1 - 1/rf`` quantile of the values recorded at that rung so far.
Two differences from one ``ASHAScheduler`` over the whole Tuner:

- rungs are kept per split (``data.split`` in the trial's config): a 1/16 split's trial is never compared with a
  1/4 split's, whose mIoU is higher for reasons that have nothing to do with its hyper-parameters;
- with several objectives a trial is stopped only when it is below the cutoff on *every* objective, so a trial
  that is good on the second one (e.g. a low ECE) is never discarded for a poor mIoU: the survivors of a rung
  include everything ASHA would keep on either objective, and the Pareto front is taken from full-budget trials.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler  # [1] Tune's scheduler interface

from npsemiseg.tune.common import SPLIT_KEY


class SplitRungScheduler(FIFOScheduler):
    """Per-split successive halving over one or several objectives (``modes``: "max"/"min" per metric)."""

    def __init__(self, *, time_attr: str, metrics: list[str], modes: list[str], max_t: int, grace_period: int,
                 reduction_factor: float) -> None:
        super().__init__()
        if not (0 < grace_period <= max_t) or reduction_factor <= 1 or len(metrics) != len(modes):
            raise ValueError(f"bad rungs: grace {grace_period}, max_t {max_t}, rf {reduction_factor}")
        self.time_attr, self.metrics, self.max_t, self.rf = time_attr, list(metrics), max_t, reduction_factor
        self.signs = [1.0 if m == "max" else -1.0 for m in modes]
        self.milestones = self.rung_milestones(grace_period, max_t, reduction_factor)
        self.rungs: dict[str, dict[float, dict[str, list[float]]]] = {}  # split -> milestone -> trial -> values
        self.stopped = 0

    @staticmethod
    def rung_milestones(grace: int, max_t: int, rf: float) -> list[float]:
        """Rung positions below the budget (ASHA's: grace, grace*rf, ... < max_t)."""
        out, m = [], float(grace)
        while m < max_t:
            out.append(m)
            m *= rf
        return out

    def decide(self, split: str, trial_id: str, t: float, values: list[float]) -> str:
        """Record ``values`` at the highest rung ``t`` has passed (once per rung) and return STOP or CONTINUE."""
        if t >= self.max_t:
            return TrialScheduler.STOP
        rungs = self.rungs.setdefault(split, {m: {} for m in self.milestones})
        for milestone in reversed(self.milestones):
            if t < milestone:
                continue
            recorded = rungs[milestone]
            if trial_id in recorded:
                return TrialScheduler.CONTINUE
            signed = [s * v for s, v in zip(self.signs, values)]
            below_all = bool(recorded) and all(
                signed[i] < np.nanpercentile([r[i] for r in recorded.values()], (1 - 1 / self.rf) * 100)
                for i in range(len(signed)))
            recorded[trial_id] = signed
            if below_all:
                self.stopped += 1
                return TrialScheduler.STOP
            return TrialScheduler.CONTINUE
        return TrialScheduler.CONTINUE

    def _values(self, result: dict[str, Any]) -> list[float] | None:
        try:
            vals = [float(result[m]) for m in self.metrics]
        except (KeyError, TypeError, ValueError):
            return None
        return vals if all(math.isfinite(v) for v in vals) else None

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        values = self._values(result)
        if self.time_attr not in result or values is None:
            return TrialScheduler.CONTINUE
        return self.decide(str(trial.config.get(SPLIT_KEY, "")), trial.trial_id, float(result[self.time_attr]),
                           values)

    def debug_string(self) -> str:
        return f"Per-split successive halving over {', '.join(self.metrics)}: {self.stopped} stopped"
