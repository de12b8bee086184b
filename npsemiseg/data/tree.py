"""What every dataset reader provides: samples (id, image path, mask path) and its train/val pools.

Split protocols (``splits.py``) only talk to this interface, so VOC, Cityscapes and list-file data share one
implementation of split generation, split-file loading and validation.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    """One image. ``mask`` is None for images that have no annotation (pure unlabelled pool)."""

    id: str
    image: Path
    mask: Path | None = None


class DataTree:
    """Base class of the dataset readers. Subclasses fill ``_pool`` (train) and ``_val`` in ``__init__``."""

    name = "base"
    num_classes = 0

    def __init__(self, base: Path) -> None:
        self.base = base  # split files store paths relative to this folder
        self._pool: dict[str, Sample] = {}
        self._val: list[Sample] = []

    def train_pool(self) -> list[Sample]:
        """Every train image (annotated or not), sorted by id."""
        return [self._pool[k] for k in sorted(self._pool)]

    def annotated_pool(self) -> list[Sample]:
        """Train images that have a mask, sorted by id (the candidates for a labelled set)."""
        return [s for s in self.train_pool() if s.mask is not None]

    def fine_ids(self) -> list[str]:
        """Finely annotated train ids (VOC's 1464); other datasets have none."""
        return []

    def val_samples(self) -> list[Sample]:
        return list(self._val)

    def lookup(self, sample_id: str) -> Sample | None:
        """The train sample with this id, or None."""
        return self._pool.get(sample_id)

    def is_val(self, sample_id: str) -> bool:
        if getattr(self, "_val_ids", None) is None:
            self._val_ids = {s.id for s in self._val}
        return sample_id in self._val_ids

    def id_from_token(self, token: str) -> str:
        """Sample id from the first token of a split-file line (a relative image path or a bare id)."""
        return Path(token).stem

    def rel(self, path: Path) -> str:
        """Path as written into split files: relative to ``base`` when inside it."""
        try:
            return path.relative_to(self.base).as_posix()
        except ValueError:
            return str(path)
