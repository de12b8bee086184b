"""torch Datasets over ``Sample`` lists: labelled (weak view + mask), unlabelled (weak, strong, box), val (full).

Every item is decoded and validated when loaded: corrupt or truncated images, masks whose size differs from the
image, and label values outside {0..C-1, 255} raise ``UserError`` naming the file.

Items are built with torch limited to one intra-op thread (restored afterwards). DataLoader workers run that way
anyway; in the main process (``num_workers=0``) the small per-image ops were measured 5-30x slower with 2
OpenMP threads than with 1 on a busy 2-core machine (benchmarks/loader_throughput.py).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils.data import Dataset

from npsemiseg.data.io import check_pair, read_image, read_mask
from npsemiseg.data.transforms import LabelledTransform, UnlabelledTransform, val_transform
from npsemiseg.data.tree import Sample


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(1)``, restoring the previous count."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def load_pair(sample: Sample, num_classes: int) -> tuple:
    """(image H x W x 3 uint8, mask H x W uint8) with every check applied."""
    if sample.mask is None:
        raise ValueError(f"{sample.id}: sample has no mask")
    image = read_image(sample.image)
    mask = read_mask(sample.mask, num_classes)
    check_pair(image, mask, sample.mask)
    return image, mask


class LabelledDataset(Dataset):
    """Items ``{"image": 3xSxS float32, "mask": SxS int64}``."""

    def __init__(self, samples: list[Sample], num_classes: int, transform: LabelledTransform) -> None:
        self.samples, self.num_classes, self.transform = list(samples), num_classes, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        with one_thread():
            return self.transform(*load_pair(self.samples[idx], self.num_classes))


class UnlabelledDataset(Dataset):
    """Items ``{"image_w", "image_s": 3xSxS, "ignore": SxS (254 at padding), "box": SxS}``; masks never read,
    unless ``gt_classes`` > 0: then items also carry ``"gt"`` (SxS, the image's mask through the same weak view,
    255 where unknown), used only to measure pseudo-label accuracy, never by a loss."""

    def __init__(self, samples: list[Sample], transform: UnlabelledTransform, gt_classes: int = 0) -> None:
        self.samples, self.transform, self.gt_classes = list(samples), transform, gt_classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        s = self.samples[idx]
        with one_thread():
            if not self.gt_classes:
                return self.transform(read_image(s.image))
            if s.mask is None:
                return self.transform(read_image(s.image), with_gt=True)
            return self.transform(*load_pair(s, self.gt_classes))


class ValDataset(Dataset):
    """Items ``{"image": 3xHxW float32, "mask": HxW int64, "id": str}`` at full resolution."""

    def __init__(self, samples: list[Sample], num_classes: int) -> None:
        self.samples, self.num_classes = list(samples), num_classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict:
        s = self.samples[idx]
        with one_thread():
            image, mask = val_transform(*load_pair(s, self.num_classes))
        return {"image": image, "mask": mask, "id": s.id}
