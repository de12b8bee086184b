"""Atomic writes: the target appears whole (ordinary permissions) or not at all."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from npsemiseg.fileio import atomic_dir, atomic_path


def test_atomic_path_success_and_failure(tmp_path: Path) -> None:
    dst = tmp_path / "sub" / "f.txt"
    with atomic_path(dst) as tmp:
        tmp.write_text("one")
        assert not dst.exists()
    assert dst.read_text() == "one"
    assert (os.stat(dst).st_mode & 0o777) == 0o666 & ~_umask()
    with pytest.raises(RuntimeError), atomic_path(dst) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert dst.read_text() == "one"
    assert sorted(p.name for p in dst.parent.iterdir()) == ["f.txt"]


def test_atomic_dir_replaces_whole_folder_or_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    with atomic_dir(out) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    with pytest.raises(ValueError), atomic_dir(out) as tmp:
        (tmp / "c").write_text("3")
        raise ValueError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
