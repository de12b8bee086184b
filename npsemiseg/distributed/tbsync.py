"""Copy rank 0's TensorBoard folder (``<out_dir>/tb``) to a storage URI while a Ray Train run trains.

On a cluster the worker that writes the event files is on a GPU node whose disk goes away with the node; the
sweep gives each trial a destination in its storage folder (``s3://.../<experiment>/tune/trial_<id>/tb``) and this
thread uploads the (small, append-only) event files every ``every_s`` seconds and once more when training ends.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from npsemiseg.storage import Storage


class TensorBoardSync:
    """A daemon thread that mirrors ``local`` to ``uri``; ``stop()`` does a last upload."""

    def __init__(self, local: str | Path, uri: str, every_s: float = 30.0) -> None:
        self.local, self.storage, self.every_s = Path(local), Storage(uri), every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tb-sync", daemon=True)

    def start(self) -> TensorBoardSync:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.storage.put_tree(self.local)
            except OSError:  # a storage hiccup must not kill training; the next round retries
                pass

    def stop(self) -> int:
        """Stop the thread, upload once more; returns the number of files now mirrored."""
        self._stop.set()
        self._thread.join(timeout=60)
        self.storage.put_tree(self.local)
        return len(Storage.tree_files(self.local))


@contextmanager
def tensorboard_mirror(uri: str | None, out_dir: str, rank: int) -> Iterator[None]:
    """In a Train worker: on rank 0 with a ``uri``, mirror ``<out_dir>/tb`` there while the block runs."""
    sync = TensorBoardSync(Path(out_dir) / "tb", uri).start() if uri and rank == 0 else None
    try:
        yield
    finally:
        if sync is not None:
            sync.stop()
