"""One Tune searcher over one Optuna study per label split, so every split's trials share one pool of trial slots.

Each new Tune trial goes to the split with the fewest trials so far (ties: the order of ``splits``); the split's
study (``<experiment>/<split>`` in the journal) samples its parameters, and the split travels in the trial's config
under ``data.split``. What Optuna is told (docs/sweeps.md "What Optuna sees"):

- every report: the objective as an intermediate value keyed by the training ``step`` (single objective only:
  Optuna has no intermediate values for several objectives; their history is kept in the ``reports`` user attr);
- the end of a trial that reached the full budget: COMPLETE with its last values;
- the end of a trial stopped earlier (ASHA, or the sweep's rung rule): its last value is reported at its last
  step first, then PRUNED (Optuna takes a pruned trial's value from its last intermediate value);
- an error: FAIL. A FAIL trial cannot be told again, so when a rerun resumes the errored Tune trial from its
  checkpoint (``Tuner.restore(resume_errored=True)``), the resumed run goes to a new Optuna trial of the same study
  with the same parameters, the failed attempt's intermediate values and ``resumed_from`` = the FAIL trial's number;
  it ends as any other trial (COMPLETE, PRUNED, or FAIL again).

User attributes join the study to ``results.parquet``: ``ray_trial_id``, ``split``, ``steps``, ``budget``,
``checkpoint`` (relative to the experiment folder: the best-val/miou checkpoint, the one the results row names and
retention keeps) with its ``checkpoint_score``, ``train_time_s``.

The searcher keeps no Optuna objects in its saved state (only which Tune trial is which Optuna trial number), so a
restored sweep reloads the studies from the journal; ``fail_orphans`` marks trials asked for before a driver was
killed, but never started by Tune, as FAIL so no study keeps a RUNNING leftover.
"""
from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher  # [1] Tune's searcher interface: suggest / on_trial_result / on_trial_complete

from npsemiseg.tune.common import SPLIT_KEY, TRAIN_TIME, relative_to, sampler_seed, study_name


def journal_storage(path: Path) -> Any:
    """The Optuna journal storage of an experiment (a plain log file optuna-dashboard can open)."""
    import optuna

    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def make_sampler(seed: int, split: str, n_startup_trials: int, concurrent: bool, multi_objective: bool) -> Any:
    """TPE seeded per split; constant liar while trials of the study run at once.

    With several objectives TPE is Optuna's multi-objective TPE (MOTPE): it splits the trials by non-domination
    rank rather than by one value, which suits a handful of trials better than NSGA-II's generations.
    """
    import optuna

    return optuna.samplers.TPESampler(seed=sampler_seed(seed, split), n_startup_trials=n_startup_trials,
                                      constant_liar=concurrent, multivariate=not multi_objective)


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


class SplitSearcher(Searcher):
    """A ``ray.tune.search.Searcher`` that routes each trial to its split's Optuna study."""

    def __init__(self, *, experiment: str, splits: list[str], trials_per_split: int, distributions: dict[str, Any],
                 metrics: list[str], modes: list[str], journal: str, experiment_dir: str, budget: int, seed: int = 0,
                 n_startup_trials: int = 10, concurrent: bool = True) -> None:
        multi = len(metrics) > 1
        super().__init__(metric=metrics if multi else metrics[0], mode=modes if multi else modes[0])
        self.experiment, self.splits, self.trials_per_split = experiment, list(splits), trials_per_split
        self.distributions, self.metrics, self.modes = distributions, list(metrics), list(modes)
        self.journal, self.experiment_dir, self.budget = journal, experiment_dir, budget
        self.seed, self.n_startup_trials, self.concurrent = seed, n_startup_trials, concurrent
        self.assigned: dict[str, tuple[str, int]] = {}  # Tune trial id -> (split, Optuna trial number)
        self.reported: dict[str, int] = {}  # Tune trial id -> last step told to Optuna
        self._studies: dict[str, Any] = {}  # not saved: reloaded from the journal

    # ----------------------------------------------------------------- studies
    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1

    def study(self, split: str) -> Any:
        """The split's study, created or loaded from the journal (with its seeded sampler)."""
        if split not in self._studies:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own plan and summary
            directions = ["maximize" if m == "max" else "minimize" for m in self.modes]
            sampler = make_sampler(self.seed, split, self.n_startup_trials, self.concurrent, self.multi_objective)
            self._studies[split] = optuna.create_study(
                study_name=study_name(self.experiment, split), storage=journal_storage(Path(self.journal)),
                sampler=sampler, directions=directions, load_if_exists=True)
        return self._studies[split]

    def _trial(self, trial_id: str) -> tuple[str, Any] | None:
        import optuna

        if trial_id not in self.assigned:
            return None
        split, number = self.assigned[trial_id]
        study = self.study(split)
        frozen = study.get_trials(deepcopy=False)[number]
        return split, optuna.trial.Trial(study, frozen._trial_id)  # the storage id of trial `number`

    # ----------------------------------------------------------------- Tune's Searcher interface
    def set_search_properties(self, metric: Any, mode: Any, config: dict, **spec: Any) -> bool:
        return True  # metric, mode and space come from the constructor (Tune's own keep precedence otherwise)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        counts = {s: 0 for s in self.splits}
        for split, _ in self.assigned.values():
            counts[split] = counts.get(split, 0) + 1
        open_splits = [s for s in self.splits if counts[s] < self.trials_per_split]
        if not open_splits:
            return Searcher.FINISHED
        split = min(open_splits, key=lambda s: counts[s])
        study = self.study(split)
        trial = study.ask(fixed_distributions=self.distributions)
        trial.set_user_attr("ray_trial_id", trial_id)
        trial.set_user_attr("split", split)
        trial.set_user_attr("budget", self.budget)
        self.assigned[trial_id] = (split, trial.number)
        return {**trial.params, SPLIT_KEY: split}

    def _values(self, result: dict[str, Any]) -> list[float] | None:
        vals = [result.get(m) for m in self.metrics]
        return [float(v) for v in vals] if all(_finite(v) for v in vals) else None

    def _record(self, trial_id: str, trial: Any, result: dict[str, Any]) -> None:
        """Intermediate value at the training step (single objective) and the progress user attrs."""
        step = result.get("step")
        if not _finite(step):
            return
        step = int(step)
        vals = self._values(result)
        if vals is not None and step > self.reported.get(trial_id, -1):
            if self.multi_objective:
                reports = dict(trial.user_attrs.get("reports", {}))
                reports[str(step)] = vals
                trial.set_user_attr("reports", reports)
            else:
                trial.report(vals[0], step)
            self.reported[trial_id] = step
        trial.set_user_attr("steps", step)
        ckpt = relative_to(result.get("checkpoint_path"), Path(self.experiment_dir))
        if ckpt:  # the checkpoint the results row keeps: best val/miou so far (the first such), else the latest
            score, attrs = result.get(self.metrics[0]), trial.user_attrs
            best = attrs.get("checkpoint_score")
            if _finite(score) and (best is None or float(score) > best):
                trial.set_user_attr("checkpoint", ckpt)
                trial.set_user_attr("checkpoint_score", float(score))
            elif best is None:
                trial.set_user_attr("checkpoint", ckpt)
        if _finite(result.get(TRAIN_TIME)):
            trial.set_user_attr("train_time_s", round(float(result[TRAIN_TIME]), 3))

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        found = self._open_trial(trial_id)
        if found is not None:
            self._record(trial_id, found[1], result)

    def _state(self, trial_id: str) -> Any:
        split, number = self.assigned[trial_id]
        return self.study(split).get_trials(deepcopy=False)[number].state

    def _open_trial(self, trial_id: str, resume: bool = True) -> tuple[str, Any] | None:
        """The RUNNING Optuna trial of a Tune trial; a FAIL one is replaced by its resumed trial (``resume``);
        None when the trial is unknown or already ended."""
        import optuna

        if trial_id not in self.assigned:
            return None
        state = self._state(trial_id)
        if state == optuna.trial.TrialState.RUNNING:
            return self._trial(trial_id)
        if state == optuna.trial.TrialState.FAIL and resume:
            return self._resume(trial_id)
        return None

    def _resume(self, trial_id: str) -> tuple[str, Any]:
        """A new RUNNING trial for an errored Tune trial that Tune resumed: same parameters, the failed attempt's
        intermediate values and user attrs, ``resumed_from`` = the FAIL trial's number. A resumed trial left
        RUNNING by a driver that died before saving the searcher's state is picked up again, not duplicated."""
        import optuna

        split, number = self.assigned[trial_id]
        study = self.study(split)
        old = study.get_trials(deepcopy=False)[number]
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t.user_attrs.get("ray_trial_id") == trial_id and t.user_attrs.get("resumed_from") == number:
                self.assigned[trial_id] = (split, t.number)
                return split, optuna.trial.Trial(study, t._trial_id)
        study.enqueue_trial(old.params, user_attrs={**old.user_attrs, "resumed_from": number})
        trial = study.ask(fixed_distributions=self.distributions)  # pops the enqueued trial: same parameters
        for step, value in sorted(old.intermediate_values.items()):
            trial.report(value, step)
        self.assigned[trial_id] = (split, trial.number)
        return split, trial

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        import optuna

        # already told: a restored sweep can complete a trial twice; an errored trial that errors again stays FAIL
        found = self._open_trial(trial_id, resume=not error)
        if found is None:
            return
        split, trial = found
        result = result or {}
        self._record(trial_id, trial, result)
        study = self.study(split)
        vals = self._values(result)
        step = int(result["step"]) if _finite(result.get("step")) else 0
        state = optuna.trial.TrialState
        if error:
            study.tell(trial, state=state.FAIL)
        elif vals is not None and step >= self.budget:
            study.tell(trial, vals if self.multi_objective else vals[0], state=state.COMPLETE)
        else:
            study.tell(trial, state=state.PRUNED)  # single objective: its value = the step-keyed last report

    # ----------------------------------------------------------------- restore
    def fail_orphans(self, known_trial_ids: set[str]) -> int:
        """Tell FAIL for RUNNING Optuna trials whose Tune trial is unknown (asked for, never started); returns how
        many. Call it after the Tuner finished."""
        import optuna

        n = 0
        for split in self.splits:
            study = self.study(split)
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if t.user_attrs.get("ray_trial_id") not in known_trial_ids:
                    optuna.trial.Trial(study, t._trial_id).set_user_attr(
                        "note", "suggested before the sweep driver stopped; Tune never started it")
                    study.tell(t.number, state=optuna.trial.TrialState.FAIL)
                    n += 1
        return n

    def get_state(self) -> dict[str, Any]:
        return {"assigned": dict(self.assigned), "reported": dict(self.reported)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.assigned = {k: tuple(v) for k, v in state["assigned"].items()}
        self.reported = dict(state["reported"])
        self._studies = {}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_studies"] = {}  # Tune pickles the searcher into tuner.pkl: never pickle storages
        return state
