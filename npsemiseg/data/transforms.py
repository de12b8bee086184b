"""Training views with ``torchvision.transforms.v2``: image and ``tv_tensors.Mask`` move together.

- weak: random rescale (scale_min..scale_max of the image's own size), random crop padded to the crop size
  (image 0; mask 255 for labelled data, 254 in the unlabelled "ignore" map), horizontal flip;
- strong (unlabelled only, on top of the weak view): colour jitter p=0.8, grayscale p=0.2, Gaussian blur p=0.5;
- a CutMix box per unlabelled sample: p=0.5, area 0.02-0.4 of the crop, aspect 0.3-3.3 (UniMatch/AugSeg practice).

All randomness comes from torch's RNG, so ``torch.manual_seed`` (or a DataLoader generator, see ``seeding.py``)
fixes every view.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2._utils import query_size

from npsemiseg.data.io import IMAGENET_MEAN, IMAGENET_STD
from npsemiseg.data.labels import IGNORE, PAD

_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


class RandomRescale(v2.Transform):
    """Resize by a factor drawn uniformly from [scale_min, scale_max] (bilinear for images, nearest for masks)."""

    def __init__(self, scale_min: float, scale_max: float) -> None:
        super().__init__()
        self.scale_min, self.scale_max = scale_min, scale_max

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = query_size(flat_inputs)
        s = _uniform(self.scale_min, self.scale_max)
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, params["size"], antialias=True)


def weak_transform(crop: int, scale_min: float, scale_max: float, mask_fill: int) -> v2.Compose:
    """Geometric weak view for (Image, Mask) pairs; ``mask_fill`` is what padded mask pixels get."""
    return v2.Compose([
        RandomRescale(scale_min, scale_max),
        v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: mask_fill}),
        v2.RandomHorizontalFlip(0.5),
    ])


def strong_transform(blur_kernel: int = 13) -> v2.Compose:
    """Photometric strong view applied to a uint8 weak view."""
    return v2.Compose([
        v2.RandomApply([v2.ColorJitter(0.5, 0.5, 0.5, 0.25)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(blur_kernel, sigma=(0.1, 2.0))], p=0.5),
    ])


def cutmix_box(size: int, p: float = 0.5, area: tuple[float, float] = (0.02, 0.4),
               ratio: tuple[float, float] = (0.3, 1 / 0.3)) -> torch.Tensor:
    """S x S int64 map, 1 inside one random box (with probability ``p``), 0 elsewhere."""
    box = torch.zeros(size, size, dtype=torch.int64)
    if float(torch.rand(())) >= p:
        return box
    a = _uniform(*area) * size * size
    r = math.exp(_uniform(math.log(ratio[0]), math.log(ratio[1])))  # log-uniform aspect ratio (h / w)
    h = min(size, max(1, round(math.sqrt(a * r))))
    w = min(size, max(1, round(math.sqrt(a / r))))
    y = int(torch.randint(0, size - h + 1, ()))
    x = int(torch.randint(0, size - w + 1, ()))
    box[y:y + h, x:x + w] = 1
    return box


def normalize(image: torch.Tensor) -> torch.Tensor:
    """uint8 3xHxW -> float32, ImageNet mean/std."""
    return ((image.float() / 255.0) - _MEAN) / _STD


def to_image(arr: np.ndarray) -> tv_tensors.Image:
    """H x W x 3 uint8 array -> tv_tensors.Image (3 x H x W uint8)."""
    return tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1))


def to_mask(arr: np.ndarray) -> tv_tensors.Mask:
    return tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(arr)))


class LabelledTransform:
    """(image, mask) arrays -> ``{"image": 3xSxS float32, "mask": SxS int64}`` (255 at padding)."""

    def __init__(self, crop: int, scale_min: float = 0.5, scale_max: float = 2.0) -> None:
        self.weak = weak_transform(crop, scale_min, scale_max, IGNORE)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> dict[str, torch.Tensor]:
        img, m = self.weak(to_image(image), to_mask(mask))
        return {"image": normalize(img), "mask": m.as_subclass(torch.Tensor).long()}


class UnlabelledTransform:
    """image array -> ``{"image_w", "image_s", "ignore" (254 at padding), "box" (CutMix, 1 inside)}``; with
    ``strong_views=2`` also ``"image_s2"`` / ``"box2"``: a second, independently drawn strong view of the same weak
    view and its own CutMix box (UniMatch's dual strong views). Its draws come after all of view 1's, so view 1
    is the same with one or two views."""

    def __init__(self, crop: int, scale_min: float = 0.5, scale_max: float = 2.0, cutmix_p: float = 0.5,
                 strong_views: int = 1) -> None:
        self.crop, self.cutmix_p, self.strong_views = crop, cutmix_p, strong_views
        self.weak = weak_transform(crop, scale_min, scale_max, PAD)
        self.strong = strong_transform()

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None,
                 with_gt: bool = False) -> dict[str, torch.Tensor]:
        """With ``mask`` (or ``with_gt``) the item also has ``"gt"``: the mask through the same weak view (255
        where unknown or padded). The random draws are the same with and without it."""
        known = mask is not None
        valid = mask if known else np.zeros(image.shape[:2], dtype=np.uint8)
        img_w, m = self.weak(to_image(image), to_mask(valid))
        img_s = self.strong(img_w)
        m = m.as_subclass(torch.Tensor).long()
        out = {
            "image_w": normalize(img_w),
            "image_s": normalize(img_s),
            "ignore": torch.where(m == PAD, PAD, 0) if known else m,
            "box": cutmix_box(self.crop, self.cutmix_p),
        }
        if self.strong_views == 2:
            out["image_s2"] = normalize(self.strong(img_w))
            out["box2"] = cutmix_box(self.crop, self.cutmix_p)
        if known or with_gt:
            out["gt"] = torch.where(m == PAD, IGNORE, m) if known else torch.full_like(m, IGNORE)
        return out


def val_transform(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Full image, no augmentation: (3xHxW float32 normalised, HxW int64)."""
    return normalize(to_image(image).as_subclass(torch.Tensor)), torch.from_numpy(mask.astype(np.int64))
