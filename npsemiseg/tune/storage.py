"""The sweep's storage: one folder (local, NFS, ``s3://``, ``gs://``, any pyarrow filesystem) holding everything.

Layout of ``<storage>/<experiment>/`` (what ``ray down`` can no longer take away)::

    results.parquet/.csv, history.*, pareto.*, plots/   rewritten as each trial ends (StorageCallback)
    optuna_journal.log                                  the Optuna studies (a copy of the driver's journal)
    trial_events.jsonl                                  trial start/end times (a copy of the driver's)
    exports/<split>/                                    best model per split, at the end
    tune/                                               the sweep's Tune experiment (Tune writes it)
    tune/trial_<id>/tb/                                 each trial's TensorBoard run (scalars + HParams)
    <trial_id>/checkpoint_*/                            each trial's Train run: its checkpoints

With a URI storage the driver works in a local copy (``settings.experiment_dir``) and mirrors it: after every
trial start, result burst, end or error the journal, events and tables are uploaded; at the end exports too. A
rerun on a new head with an empty disk first downloads the journal, events and tables (``restore_local``), then
Tune restores the sweep's experiment from the same storage.

The Optuna study stays a journal *file on the driver's local disk* (POSIX locks work there; only the driver writes
the study when a Tune searcher drives it) and is copied to storage; never opened on S3/NFS directly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from npsemiseg.storage import Storage
from npsemiseg.tune.common import EVENTS, HISTORY, JOURNAL, PARETO, RESULTS

TABLES = tuple(f"{Path(t).stem}{ext}" for t in (RESULTS, HISTORY, PARETO) for ext in (".parquet", ".csv"))
RESTORED = (JOURNAL, EVENTS, *TABLES)  # what a new head downloads before Tune restores the sweep
MIRRORED = (*RESTORED, "plots")  # what the driver mirrors during the sweep (exports only at the end)


def experiment_storage(settings: Any) -> Storage:
    """``<storage>/<experiment>`` of a sweep."""
    return Storage(f"{settings.storage_uri}/{settings.experiment}")


def mirrors(settings: Any) -> bool:
    """True when the driver's experiment folder is a local copy of a remote one (URI storage)."""
    return bool(settings.remote)


def sync_up(settings: Any, exports: bool = False) -> int:
    """Upload the driver's journal, events, tables and plots (and exports) to the storage; bytes sent (0 when
    local)."""
    if not mirrors(settings):
        return 0
    only = MIRRORED + (("exports",) if exports else ())
    return experiment_storage(settings).put_tree(settings.experiment_dir, only=only)


def restore_local(settings: Any) -> list[str]:
    """On a head whose local copy lacks them, download the journal, events and tables from the storage; names
    fetched."""
    if not mirrors(settings):
        return []
    st = experiment_storage(settings)
    got = []
    for name in RESTORED:
        local = settings.experiment_dir / name
        if not local.exists() and st.get_file(name, local):
            got.append(name)
    if got:
        print(f"[storage] restored {', '.join(got)} from {st.uri}", flush=True)
    return got


# The driver's live settings per experiment: a callback restored from tuner.pkl (on a new head, with a new local
# dir) finds the current ones here instead of the pickled copy.
_ACTIVE: dict[str, Any] = {}


def activate(settings: Any) -> None:
    """Register the running sweep's settings for its callbacks (call before ``Tuner.fit``)."""
    _ACTIVE[settings.experiment] = settings


def active(experiment: str) -> Any:
    return _ACTIVE[experiment]
