"""Cityscapes reader and the official labelIds -> trainIds converter.

Layout (``root`` holds both folders)::

    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png       as shipped
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png  what we train on (19 classes, 255 void)

Cityscapes ships labelIds only; ``convert_trainids(root)`` (CLI: ``npsemiseg cityscapes-trainids ROOT``)
writes the trainIds files with the official 34-id table. Sample ids are ``<city>/<city>_<seq>_<frame>``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from npsemiseg.data.io import read_mask, save_mask
from npsemiseg.data.labels import IGNORE, NUM_CLASSES
from npsemiseg.data.tree import DataTree, Sample
from npsemiseg.errors import UserError

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

# Official cityscapesScripts table: labelId -> trainId for the 19 evaluated classes; every other id
# (0-6 void/flat-void, 9 parking, 10 rail track, 14-16 guard rail/bridge/tunnel, 18 polegroup, 29 caravan,
# 30 trailer, -1 license plate) maps to 255.
LABELID_TO_TRAINID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
NUM_LABEL_IDS = 34  # ids 0..33; -1 (license plate) is stored as 255 in uint8 PNGs

IMG_SUFFIX = "_leftImg8bit.png"
LABELIDS_SUFFIX = "_gtFine_labelIds.png"
TRAINIDS_SUFFIX = "_gtFine_labelTrainIds.png"


def trainid_lut() -> np.ndarray:
    """256-entry uint8 lookup table labelId -> trainId (255 for void, unknown and license-plate ids)."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for label_id, train_id in LABELID_TO_TRAINID.items():
        lut[label_id] = train_id
    return lut


def labelids_to_trainids(label_ids: np.ndarray) -> np.ndarray:
    """Map a labelIds array (uint8 or int with -1) to trainIds."""
    a = np.asarray(label_ids)
    if a.dtype != np.uint8:
        a = np.where((a < 0) | (a > 255), 255, a).astype(np.uint8)
    return trainid_lut()[a]


def _check_root(root: str | os.PathLike) -> Path:
    r = Path(root)
    if not r.is_dir():
        raise UserError(f"{r}: Cityscapes root not found")
    return r


def convert_trainids(root: str | os.PathLike) -> int:
    """Write ``*_gtFine_labelTrainIds.png`` beside every ``*_gtFine_labelIds.png`` under ``root/gtFine``.

    Each file is written atomically; returns the number of files written. Re-running overwrites them.
    """
    r = _check_root(root)
    gt = r / "gtFine"
    if not gt.is_dir():
        raise UserError(f"{gt}: no gtFine folder under the Cityscapes root")
    files = sorted(gt.rglob(f"*{LABELIDS_SUFFIX}"))
    if not files:
        raise UserError(f"{gt}: no *{LABELIDS_SUFFIX} files found")
    lut = trainid_lut()
    for f in files:
        ids = read_mask(f)
        bad = ids[(ids >= NUM_LABEL_IDS) & (ids != 255)]
        if bad.size:
            raise UserError(f"{f}: label id {int(bad[0])} outside 0..{NUM_LABEL_IDS - 1} (and 255 for -1)")
        out = f.with_name(f.name[: -len(LABELIDS_SUFFIX)] + TRAINIDS_SUFFIX)
        save_mask(out, lut[ids], palette=False)
    return len(files)


class CityscapesTree(DataTree):
    """Samples of a Cityscapes tree (train pool = the ``train`` split, val = ``val``)."""

    name = "cityscapes"
    num_classes = NUM_CLASSES["cityscapes"]

    def __init__(self, root: str | os.PathLike) -> None:
        super().__init__(_check_root(root))
        if not (self.base / "leftImg8bit").is_dir():
            raise UserError(f"{self.base}: no leftImg8bit folder under the Cityscapes root (data.root)")
        self._pool = {s.id: s for s in self._scan("train")}
        self._val = sorted(self._scan("val"), key=lambda s: s.id)
        if not self._pool:
            raise UserError(f"{self.base / 'leftImg8bit' / 'train'}: no *{IMG_SUFFIX} images found")

    def _scan(self, split: str) -> list[Sample]:
        folder = self.base / "leftImg8bit" / split
        out = []
        for img in sorted(folder.glob(f"*/*{IMG_SUFFIX}")):
            city, stem = img.parent.name, img.name[: -len(IMG_SUFFIX)]
            gt = self.base / "gtFine" / split / city
            mask = gt / f"{stem}{TRAINIDS_SUFFIX}"
            if not mask.is_file():
                if (gt / f"{stem}{LABELIDS_SUFFIX}").is_file():
                    hint = f"generate trainIds with `npsemiseg cityscapes-trainids {self.base}`"
                    raise UserError(f"{mask}: missing; {hint}")
                raise UserError(f"{mask}: mask not found for {img}")
            out.append(Sample(f"{city}/{stem}", img, mask))
        return out

    def id_from_token(self, token: str) -> str:
        """``leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png``, ``aachen/aachen_000000_000019`` or
        ``aachen_000000_000019`` -> ``aachen/aachen_000000_000019``."""
        name = Path(token).name
        for suffix in (IMG_SUFFIX, TRAINIDS_SUFFIX, LABELIDS_SUFFIX, ".png"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        city = name.split("_", 1)[0]
        return f"{city}/{name}"
