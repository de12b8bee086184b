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

import pyarrow.fs as pafs


def upload_tree(local: Path, uri: str) -> int:
    """Copy every file below ``local`` to ``uri`` (same relative names); returns the number of files."""
    if not local.is_dir():
        return 0
    fs, root = pafs.FileSystem.from_uri(uri.rstrip("/"))
    n = 0
    for f in sorted(local.rglob("*")):
        if f.is_file():
            dst = f"{root}/{f.relative_to(local).as_posix()}"
            if isinstance(fs, pafs.LocalFileSystem):  # object stores have no folders to make
                fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
            pafs.copy_files(str(f), dst, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
            n += 1
    return n


class TensorBoardSync:
    """A daemon thread that mirrors ``local`` to ``uri``; ``stop()`` does a last upload."""

    def __init__(self, local: str | Path, uri: str, every_s: float = 30.0) -> None:
        self.local, self.uri, self.every_s = Path(local), uri, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tb-sync", daemon=True)

    def start(self) -> TensorBoardSync:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                upload_tree(self.local, self.uri)
            except OSError:  # a storage hiccup must not kill training; the next round retries
                pass

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=60)
        return upload_tree(self.local, self.uri)


@contextmanager
def tensorboard_mirror(uri: str | None, out_dir: str, rank: int) -> Iterator[None]:
    """In a Train worker: on rank 0 with a ``uri``, mirror ``<out_dir>/tb`` there while the block runs."""
    sync = TensorBoardSync(Path(out_dir) / "tb", uri).start() if uri and rank == 0 else None
    try:
        yield
    finally:
        if sync is not None:
            sync.stop()
