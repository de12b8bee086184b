"""When trials held their slots: an append-only event log, and the slot utilisation computed from it.

``TrialEvents`` (a Tune callback on the driver) appends one JSON line per event to ``<experiment>/trial_events.jsonl``:
``sweep_start`` / ``sweep_end`` for each run of the driver, ``start`` when Tune starts (or restarts) a trial and
``end`` when it completes, errors or is stopped. The file survives a killed driver (an attempt left open is
closed at that trial's last ``result`` event).

Slot utilisation = busy trial-slot time / (slots x makespan): busy = the sum over trials of the time they held a
slot (start to end, every attempt); makespan = first trial start to last trial end, summed over driver runs;
slots = the trials that could run at once. A trial's *training* time is measured elsewhere (inside the training
function, ``time/train_s``); slot time minus training time is its start-up/placement time.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback  # [1] Tune callbacks run in the driver

from npsemiseg.tune.common import SPLIT_KEY


def append_event(path: Path, event: str, **fields: Any) -> None:
    """One event line (``time`` = Unix seconds)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps({"event": event, "time": round(time.time(), 3), **fields}) + "\n")


def read_events(path: Path) -> list[dict[str, Any]]:
    """The events in file order (a torn last line from a killed driver is skipped)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class TrialEvents(Callback):
    """Appends trial start/result/end times to the events file."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def _log(self, event: str, trial: Any, **fields: Any) -> None:
        append_event(self.path, event, trial_id=trial.trial_id, split=trial.config.get(SPLIT_KEY), **fields)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._log("start", trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._log("result", trial, step=result.get("step"))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._log("end", trial, status="TERMINATED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._log("end", trial, status="ERROR")


@dataclass
class TrialTimes:
    """One trial's time in slots, from the events."""

    first_start: float | None = None
    last_end: float | None = None
    slot_s: float = 0.0
    attempts: int = 0


def trial_times(events: list[dict[str, Any]]) -> dict[str, TrialTimes]:
    """Per trial: first start, last end, summed slot time over attempts (an open attempt ends at its last event)."""
    out: dict[str, TrialTimes] = {}
    open_at: dict[str, float] = {}
    last_seen: dict[str, float] = {}

    def close(tid: str, t: float) -> None:
        tt = out[tid]
        tt.slot_s += max(0.0, t - open_at.pop(tid))
        tt.last_end = t

    for e in events:
        tid, t = e.get("trial_id"), float(e["time"])
        if e["event"] == "sweep_start":  # a new driver run: attempts left open by a killed driver end here
            for k in list(open_at):
                close(k, last_seen.get(k, open_at[k]))
            continue
        if tid is None:
            continue
        tt = out.setdefault(tid, TrialTimes())
        if e["event"] == "start":
            if tid in open_at:
                close(tid, last_seen.get(tid, open_at[tid]))
            open_at[tid] = t
            tt.attempts += 1
            tt.first_start = t if tt.first_start is None else tt.first_start
        elif e["event"] == "end" and tid in open_at:
            close(tid, t)
        last_seen[tid] = t
    for k in list(open_at):
        close(k, last_seen.get(k, open_at[k]))
    return out


def utilisation(events: list[dict[str, Any]], slots: int) -> dict[str, float]:
    """``{"busy_s", "makespan_s", "slots", "utilisation"}`` over every driver run in ``events``."""
    runs: list[list[dict[str, Any]]] = [[]]
    for e in events:
        if e["event"] == "sweep_start" and runs[-1]:
            runs.append([])
        runs[-1].append(e)
    busy = makespan = 0.0
    for run in runs:
        times = trial_times(run)
        starts = [t.first_start for t in times.values() if t.first_start is not None]
        ends = [t.last_end for t in times.values() if t.last_end is not None]
        busy += sum(t.slot_s for t in times.values())
        if starts and ends:
            makespan += max(ends) - min(starts)
    util = busy / (slots * makespan) if slots > 0 and makespan > 0 else float("nan")
    return {"busy_s": round(busy, 2), "makespan_s": round(makespan, 2), "slots": slots, "utilisation": util}
