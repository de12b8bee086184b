"""List-file datasets: bring your own images without writing a Dataset class.

Format (one image per line, whitespace-separated, ``#`` starts a comment, blank lines skipped)::

    images/0001.jpg masks/0001.png     # labelled / val list: image and index-mask PNG
    images/0002.jpg                    # unlabelled list: image only (a second column is ignored)

Relative paths are relative to the folder holding the list file; absolute paths are used as they are. Masks
are palette or grayscale PNGs of class ids 0..C-1, with 255 = ignore. The sample id is the image path as written.
"""
from __future__ import annotations

import os
from pathlib import Path

from npsemiseg.data.tree import DataTree, Sample
from npsemiseg.errors import UserError


def read_list(path: str | os.PathLike, need_mask: bool, key: str = "") -> list[Sample]:
    """Parse a list file; every referenced file must exist (errors name the list file and line)."""
    p = Path(path)
    label = f" ({key})" if key else ""
    if not p.is_file():
        raise UserError(f"{p}: list file not found{label}")
    try:
        lines = p.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: cannot read list file ({e})") from None
    folder = p.parent
    out: list[Sample] = []
    seen: dict[str, int] = {}
    for n, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        tok = line.split()
        if need_mask and len(tok) < 2:
            raise UserError(f"{p}:{n}: expected 'image mask', got {line!r}")
        if len(tok) > 2:
            raise UserError(f"{p}:{n}: expected at most two paths (image [mask]), got {len(tok)}")
        img = (folder / tok[0]) if not os.path.isabs(tok[0]) else Path(tok[0])
        if not img.is_file():
            raise UserError(f"{p}:{n}: image not found: {img}")
        mask = None
        if need_mask:
            mask = (folder / tok[1]) if not os.path.isabs(tok[1]) else Path(tok[1])
            if not mask.is_file():
                raise UserError(f"{p}:{n}: mask not found: {mask}")
        sid = tok[0]
        if sid in seen:
            raise UserError(f"{p}:{n}: duplicate image {sid} (first on line {seen[sid]})")
        seen[sid] = n
        out.append(Sample(sid, img, mask))
    if not out:
        raise UserError(f"{p}: list file has no entries{label}")
    return out


class ListTree(DataTree):
    """Labelled, unlabelled and val sets given directly by three list files."""

    name = "list"

    def __init__(self, labelled_list: str, unlabelled_list: str, val_list: str, num_classes: int) -> None:
        self.labelled_list = Path(labelled_list)
        super().__init__(self.labelled_list.parent)
        self.num_classes = num_classes
        self.labelled = read_list(labelled_list, need_mask=True, key="data.labelled_list")
        self.unlabelled = (
            read_list(unlabelled_list, need_mask=False, key="data.unlabelled_list") if unlabelled_list else []
        )
        self._val = read_list(val_list, need_mask=True, key="data.val_list")
        self._pool = {s.id: s for s in self.unlabelled}
        self._pool.update({s.id: s for s in self.labelled})
        _disjoint(self.labelled, self.unlabelled, "data.labelled_list", "data.unlabelled_list")
        _disjoint(self.labelled + self.unlabelled, self._val, "train lists", "data.val_list")


def _disjoint(a: list[Sample], b: list[Sample], name_a: str, name_b: str) -> None:
    paths = {s.image.resolve(): s for s in a}
    both = [s for s in b if s.image.resolve() in paths]
    if both:
        raise UserError(f"{name_a} and {name_b} share {len(both)} images (first: {both[0].image})")
