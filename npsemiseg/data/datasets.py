"""torch Datasets over ``Sample`` lists: labelled (weak view + mask), unlabelled (weak, strong, box), val (full).

Every item is decoded and validated when loaded: corrupt or truncated images, masks whose size differs from the
image, and label values outside {0..C-1, 255} raise ``UserError`` naming the file.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from npsemiseg.data.io import check_pair, read_image, read_mask
from npsemiseg.data.transforms import LabelledTransform, UnlabelledTransform, val_transform
from npsemiseg.data.tree import Sample


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
        return self.transform(*load_pair(self.samples[idx], self.num_classes))


class UnlabelledDataset(Dataset):
    """Items ``{"image_w", "image_s": 3xSxS, "ignore": SxS (254 at padding), "box": SxS}``; masks never read."""

    def __init__(self, samples: list[Sample], transform: UnlabelledTransform) -> None:
        self.samples, self.transform = list(samples), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        return self.transform(read_image(self.samples[idx].image))


class ValDataset(Dataset):
    """Items ``{"image": 3xHxW float32, "mask": HxW int64, "id": str}`` at full resolution."""

    def __init__(self, samples: list[Sample], num_classes: int) -> None:
        self.samples, self.num_classes = list(samples), num_classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict:
        s = self.samples[idx]
        image, mask = val_transform(*load_pair(s, self.num_classes))
        return {"image": image, "mask": mask, "id": s.id}
