"""A folder in any pyarrow filesystem (local, NFS, ``s3://``, ``gs://``), addressed by relative paths.

Shared by the sweep's storage mirror (``tune/storage.py``) and rank 0's TensorBoard upload
(``distributed/tbsync.py``); no Ray here, so both layers can use it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs

from npsemiseg.errors import UserError, one_line


class Storage:
    """A folder in a pyarrow filesystem, addressed by relative paths (``Storage("s3://b/p").put_file(...)``)."""

    def __init__(self, uri: str | os.PathLike) -> None:
        uri = str(uri)
        self.uri = uri.rstrip("/")
        try:
            if "://" in uri:
                self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
            else:
                self.fs, self.root = pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
                self.uri = self.root
        except (OSError, ValueError) as e:
            raise UserError(f"--storage-path: cannot open {uri} ({one_line(e)})") from None
        self.root = self.root.rstrip("/")

    @property
    def remote(self) -> bool:
        return not isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, rel: str = "") -> str:
        return f"{self.root}/{rel}".rstrip("/") if rel else self.root

    def child(self, rel: str) -> Storage:
        return Storage(f"{self.uri}/{rel}")

    def info(self, rel: str = "") -> pafs.FileInfo:
        return self.fs.get_file_info(self.path(rel))

    def exists(self, rel: str = "") -> bool:
        return self.info(rel).type != pafs.FileType.NotFound

    def files(self, rel: str = "") -> list[pafs.FileInfo]:
        """Every file below ``rel`` (recursive); [] when it does not exist."""
        if self.info(rel).type != pafs.FileType.Directory:
            return []
        sel = pafs.FileSelector(self.path(rel), recursive=True, allow_not_found=True)
        return [f for f in self.fs.get_file_info(sel) if f.type == pafs.FileType.File]

    def dirs(self, rel: str = "") -> list[str]:
        """Names of the folders directly below ``rel``."""
        if self.info(rel).type != pafs.FileType.Directory:
            return []
        sel = pafs.FileSelector(self.path(rel), recursive=False, allow_not_found=True)
        return [f.base_name for f in self.fs.get_file_info(sel) if f.type == pafs.FileType.Directory]

    def size(self, rel: str = "") -> int:
        info = self.info(rel)
        if info.type == pafs.FileType.File:
            return int(info.size or 0)
        return sum(int(f.size or 0) for f in self.files(rel))

    def put_file(self, local: str | os.PathLike, rel: str) -> None:
        dst = self.path(rel)
        if not self.remote:  # write beside and rename: readers never see half a file
            self.fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
            tmp = f"{dst}.tmp-{os.getpid()}"
            pafs.copy_files(str(local), tmp, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)
            self.fs.move(tmp, dst)
        else:  # an object PUT is atomic
            pafs.copy_files(str(local), dst, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)

    def get_file(self, rel: str, local: str | os.PathLike) -> bool:
        """Download ``rel`` to ``local``; False when it does not exist."""
        if self.info(rel).type != pafs.FileType.File:
            return False
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{local}.tmp-{os.getpid()}")
        pafs.copy_files(self.path(rel), str(tmp), source_filesystem=self.fs,
                        destination_filesystem=pafs.LocalFileSystem())
        os.replace(tmp, local)
        return True

    @staticmethod
    def tree_files(local: str | os.PathLike, only: tuple[str, ...] = ()) -> list[tuple[Path, str]]:
        """(file, relative posix name) of what ``put_tree`` sends: the files below ``local`` (only the top-level
        entries named in ``only``, when given), hidden files left out; [] when ``local`` is not a folder."""
        base = Path(local)
        if not base.is_dir():
            return []
        out = []
        for f in sorted(base.rglob("*")):
            r = f.relative_to(base)
            if f.is_file() and not (only and r.parts[0] not in only) and not f.name.startswith("."):
                out.append((f, r.as_posix()))
        return out

    def put_tree(self, local: str | os.PathLike, rel: str = "", only: tuple[str, ...] = ()) -> int:
        """Upload ``tree_files(local, only)`` below ``rel``; returns bytes sent."""
        sent = 0
        for f, r in self.tree_files(local, only):
            self.put_file(f, f"{rel}/{r}" if rel else r)
            sent += f.stat().st_size
        return sent

    def get_tree(self, rel: str, local: str | os.PathLike) -> int:
        """Download every file below ``rel`` into ``local``; returns the number of files."""
        n = 0
        prefix = self.path(rel) + "/"
        for f in self.files(rel):
            self.get_file(f.path[len(self.root) + 1:], Path(local) / f.path[len(prefix):])
            n += 1
        return n

    def delete_dir(self, rel: str) -> None:
        self.fs.delete_dir(self.path(rel))
