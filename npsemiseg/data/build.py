"""``build_datasets(cfg) -> TrainData``: the one entry point the training loop uses.

Reads ``cfg.data`` (dataset, root, split, split_seed, split_dir, list files, crop/scale, val_limit) and
``cfg.num_classes()``; validates the split (see ``splits.py``) and every file pair's existence and header sizes
up front, so a broken dataset fails before training starts rather than hours in.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset

from npsemiseg.config import Config
from npsemiseg.data.cityscapes import CityscapesTree
from npsemiseg.data.datasets import LabelledDataset, UnlabelledDataset, ValDataset
from npsemiseg.data.io import image_size
from npsemiseg.data.listfile import ListTree
from npsemiseg.data.splits import Split, SplitInfo, resolve_split, split_checksum
from npsemiseg.data.transforms import LabelledTransform, UnlabelledTransform
from npsemiseg.data.tree import DataTree, Sample
from npsemiseg.data.voc import VOCTree
from npsemiseg.errors import UserError


@dataclass
class TrainData:
    """Datasets of one run. ``unlabelled`` is None when the split leaves no unlabelled images."""

    labelled: Dataset
    unlabelled: Dataset | None
    val: Dataset
    num_classes: int
    split_info: SplitInfo


def open_tree(cfg: Config) -> DataTree:
    """The dataset reader named by ``cfg.data.dataset``."""
    d = cfg.data
    if d.dataset == "voc":
        return VOCTree(d.root)
    if d.dataset == "cityscapes":
        return CityscapesTree(d.root)
    return ListTree(d.labelled_list, d.unlabelled_list, d.val_list, cfg.num_classes())


def check_sizes(samples: list[Sample]) -> None:
    """Header-only check that every mask has its image's size (UserError naming the mask)."""
    for s in samples:
        if s.mask is None:
            continue
        hi, wi = image_size(s.image, "image")
        hm, wm = image_size(s.mask, "mask")
        if (hi, wi) != (hm, wm):
            raise UserError(f"{s.mask}: mask size {wm}x{hm} != image size {wi}x{hi} ({s.image.name})")


def select_split(cfg: Config, tree: DataTree) -> Split:
    """The labelled/unlabelled split of the run (list datasets define it by their list files)."""
    d = cfg.data
    if isinstance(tree, ListTree):
        lab, unl = tree.labelled, tree.unlabelled
        info = SplitInfo(f"list/{tree.labelled_list.name}", len(lab), len(unl),
                         split_checksum([s.id for s in lab], [s.id for s in unl]), str(tree.labelled_list), 0)
        return Split(lab, unl, info)
    return resolve_split(tree, d.split, d.split_seed, d.split_dir)


def build_datasets(cfg: Config) -> TrainData:
    """Labelled, unlabelled and val datasets for ``cfg`` (see docs/CONTRACTS.md for the item dicts)."""
    d = cfg.data
    tree = open_tree(cfg)
    num_classes = cfg.num_classes() or tree.num_classes
    split = select_split(cfg, tree)
    val = tree.val_samples()
    if d.val_limit:
        val = val[: d.val_limit]
    if not val:
        raise UserError(f"{tree.base}: no val images found")
    check_sizes(split.labelled)
    check_sizes(val)
    labelled = LabelledDataset(split.labelled, num_classes, LabelledTransform(d.crop_size, d.scale_min, d.scale_max))
    unlabelled = None
    if split.unlabelled:
        u_tf = UnlabelledTransform(d.crop_size, d.scale_min, d.scale_max, strong_views=cfg.train.strong_views)
        unlabelled = UnlabelledDataset(split.unlabelled, u_tf, gt_classes=num_classes if cfg.train.pl_gt_metrics else 0)
    return TrainData(labelled, unlabelled, ValDataset(val, num_classes), num_classes, split.info)
