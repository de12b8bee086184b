"""PASCAL VOC 2012 + SBD ("aug") reader.

Layout (``root`` holds ``VOCdevkit/``; pointing at ``VOCdevkit/VOC2012`` itself works too)::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png       fine masks (palette PNG, 255 boundaries)
    VOCdevkit/VOC2012/SegmentationClassAug/<id>.png    SBD masks (grayscale or palette PNG)
    VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt  the 1464 fine train ids
    VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt    the 1449 val ids
    VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt (or trainaug.txt, optional) the 10582 pool
    VOCdevkit/VOC2012/ImageSets/Segmentation/train_unlabelled.txt (optional) extra images with no mask

The train pool is ``train_aug.txt`` when present, otherwise the fine train ids plus every id with a
``SegmentationClassAug`` mask, minus val. Extra ids in ``train_unlabelled.txt`` join it without masks: they can
only ever be unlabelled. A fine mask (``SegmentationClass``) is preferred over the SBD one for the same id.
"""
from __future__ import annotations

import os
from pathlib import Path

from npsemiseg.data.labels import NUM_CLASSES
from npsemiseg.data.tree import DataTree, Sample
from npsemiseg.errors import UserError

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def find_voc_base(root: str | os.PathLike) -> Path:
    """The VOC2012 folder under ``root`` (``root/VOCdevkit/VOC2012`` or ``root`` itself)."""
    r = Path(root)
    if not r.exists():
        raise UserError(f"{r}: data root not found (data.root)")
    for cand in (r / "VOCdevkit" / "VOC2012", r / "VOC2012", r):
        if (cand / "JPEGImages").is_dir():
            return cand
    raise UserError(f"{r}: no VOCdevkit/VOC2012/JPEGImages under the data root (data.root)")


def read_id_list(path: Path) -> list[tuple[int, str]]:
    """(line number, first token) of every non-blank line of an id list."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    return [(i, ln.split()[0]) for i, ln in enumerate(lines, 1) if ln.strip()]


class VOCTree(DataTree):
    """Samples of a VOC 2012 (+ SBD) tree."""

    name = "voc"
    num_classes = NUM_CLASSES["voc"]

    def __init__(self, root: str | os.PathLike) -> None:
        super().__init__(find_voc_base(root))
        b = self.base
        sets = b / "ImageSets" / "Segmentation"
        for need in ("train.txt", "val.txt"):
            if not (sets / need).is_file():
                raise UserError(f"{sets / need}: missing VOC id list")
        self._fine_dir, self._aug_dir = b / "SegmentationClass", b / "SegmentationClassAug"
        fine = {p.stem for p in _pngs(self._fine_dir)}
        aug = {p.stem for p in _pngs(self._aug_dir)}

        val_list = sets / "val.txt"
        self._val = [self._sample(val_list, ln, i, fine, aug, need_mask=True) for ln, i in read_id_list(val_list)]
        val_ids = {s.id for s in self._val}
        self._fine_train = [i for _, i in read_id_list(sets / "train.txt")]
        pool: dict[str, Sample] = {}
        for ln, i in read_id_list(sets / "train.txt"):
            pool[i] = self._sample(sets / "train.txt", ln, i, fine, aug, need_mask=True)
        listed = next((sets / n for n in ("train_aug.txt", "trainaug.txt") if (sets / n).is_file()), None)
        if listed is not None:
            for ln, i in read_id_list(listed):
                if i not in pool:
                    pool[i] = self._sample(listed, ln, i, fine, aug, need_mask=True)
        else:
            for i in sorted(aug - val_ids - set(pool)):
                pool[i] = self._sample(self._aug_dir, 0, i, fine, aug, need_mask=True)
        extra = sets / "train_unlabelled.txt"
        if extra.is_file():
            for ln, i in read_id_list(extra):
                if i not in pool:
                    pool[i] = Sample(i, self._image(extra, ln, i), None)
        clash = sorted(set(pool) & val_ids)
        if clash:
            raise UserError(f"{sets}: {len(clash)} val ids are also in the train pool (first: {clash[0]})")
        self._pool = pool

    def _image(self, src: Path, line: int, sample_id: str) -> Path:
        img = self.base / "JPEGImages" / f"{sample_id}.jpg"
        if not img.is_file():
            where = f"{src}:{line}" if line else str(src)
            raise UserError(f"{where}: image not found: {img}")
        return img

    def _sample(self, src: Path, line: int, sample_id: str, fine: set[str], aug: set[str], need_mask: bool) -> Sample:
        img = self._image(src, line, sample_id)
        if sample_id in fine:
            mask: Path | None = self._fine_dir / f"{sample_id}.png"
        elif sample_id in aug:
            mask = self._aug_dir / f"{sample_id}.png"
        else:
            mask = None
        if mask is None and need_mask:
            raise UserError(f"{src}:{line}: no mask for {sample_id} in SegmentationClass or SegmentationClassAug")
        return Sample(sample_id, img, mask)

    def fine_ids(self) -> list[str]:
        return sorted(self._fine_train)


def _pngs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [Path(e.path) for e in os.scandir(folder) if e.name.endswith(".png")]
