"""build_datasets(cfg): the contract the training loop relies on, list-file datasets, bad input at load."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from npsemiseg.config import apply_overrides
from npsemiseg.data.build import build_datasets
from npsemiseg.data.io import save_mask
from npsemiseg.errors import UserError


def test_tiny_cfg_contract(tiny_cfg):
    td = build_datasets(tiny_cfg)
    assert td.num_classes == 21
    info = td.split_info.to_dict()
    assert info["name"] == "demo/1_4" and info["n_labelled"] == 5 and info["n_unlabelled"] == 23
    assert len(info["checksum"]) == 64
    assert len(td.labelled) == 5 and len(td.unlabelled) == 23 and len(td.val) == 4  # val_limit=4
    x = td.labelled[0]
    assert set(x) == {"image", "mask"} and x["image"].shape == (3, 64, 64) and x["mask"].shape == (64, 64)
    assert set(x["mask"].unique().tolist()) <= {0, 1, 5, 8, 12, 15, 19, 255}
    u = td.unlabelled[0]
    assert set(u) == {"image_w", "image_s", "ignore", "box"}
    assert u["image_w"].shape == (3, 64, 64) and u["ignore"].dtype == torch.int64
    v = td.val[0]
    assert set(v) == {"image", "mask", "id"} and v["image"].shape == (3, 64, 72) and v["mask"].shape == (64, 72)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        batch = next(iter(torch.utils.data.DataLoader(td.unlabelled, batch_size=2)))
        assert torch.get_num_threads() == 2  # items are built single-threaded, the count is restored
    finally:
        torch.set_num_threads(threads)
    assert batch["image_s"].shape == (2, 3, 64, 64) and batch["box"].shape == (2, 64, 64)


def test_same_seed_same_split_other_seed_other(tiny_cfg):
    a = build_datasets(tiny_cfg).split_info
    b = build_datasets(apply_overrides(tiny_cfg, {"data.split_seed": 1})).split_info
    assert a.checksum != b.checksum and a.n_labelled == b.n_labelled
    assert build_datasets(tiny_cfg).split_info == a


def test_cityscapes_demo_tree(tiny_cfg, demo_root):
    cfg = apply_overrides(tiny_cfg, {"data.dataset": "cityscapes", "data.root": str(demo_root / "cityscapes"),
                                     "data.split": "demo/1_4"})
    td = build_datasets(cfg)
    assert td.num_classes == 19 and len(td.labelled) == 3 and len(td.unlabelled) == 9
    assert set(td.labelled[0]["mask"].unique().tolist()) <= set(range(19)) | {255}
    with pytest.raises(UserError, match="for dataset voc, not cityscapes"):
        build_datasets(apply_overrides(cfg, {"data.split": "voc/classic/92"}))


def _lists(tmp_path, demo_root, n_lab=3, n_unl=2, mask_override=None):
    base = demo_root / "voc/VOCdevkit/VOC2012"
    ids = [p.stem for p in sorted((base / "SegmentationClass").glob("*.png"))]
    (tmp_path / "lab.txt").write_text("".join(
        f"{base}/JPEGImages/{i}.jpg {mask_override or base / 'SegmentationClass' / (i + '.png')}\n"
        for i in ids[:n_lab]))
    extra = (base / "ImageSets/Segmentation/train_unlabelled.txt").read_text().split()
    (tmp_path / "unl.txt").write_text("# pure unlabelled\n" + "".join(f"{base}/JPEGImages/{i}.jpg\n"
                                                                   for i in extra[:n_unl]))
    val = (base / "ImageSets/Segmentation/val.txt").read_text().split()
    (tmp_path / "val.txt").write_text("".join(f"{base}/JPEGImages/{i}.jpg {base}/SegmentationClass/{i}.png\n"
                                              for i in val[:2]))


def test_list_dataset(tiny_cfg, demo_root, tmp_path):
    _lists(tmp_path, demo_root)
    over = {"data.dataset": "list", "data.num_classes": 21, "data.labelled_list": str(tmp_path / "lab.txt"),
            "data.unlabelled_list": str(tmp_path / "unl.txt"), "data.val_list": str(tmp_path / "val.txt")}
    td = build_datasets(apply_overrides(tiny_cfg, over))
    assert (len(td.labelled), len(td.unlabelled), len(td.val)) == (3, 2, 2)
    assert td.split_info.name == "list/lab.txt"
    td = build_datasets(apply_overrides(tiny_cfg, {**over, "data.unlabelled_list": ""}))
    assert td.unlabelled is None  # supervised-only data is allowed
    (tmp_path / "val.txt").write_text((tmp_path / "val.txt").read_text() + "nope.jpg x.png\n")
    with pytest.raises(UserError, match=r"val\.txt:3: image not found"):
        build_datasets(apply_overrides(tiny_cfg, over))


def test_missing_root(tiny_cfg, tmp_path):
    with pytest.raises(UserError, match="data root not found"):
        build_datasets(apply_overrides(tiny_cfg, {"data.root": str(tmp_path / "nope")}))


def test_mask_size_mismatch_caught_up_front(tiny_cfg, demo_root, tmp_path):
    save_mask(tmp_path / "small.png", np.zeros((10, 10), np.uint8))
    _lists(tmp_path, demo_root, mask_override=tmp_path / "small.png")
    over = {"data.dataset": "list", "data.num_classes": 21, "data.labelled_list": str(tmp_path / "lab.txt"),
            "data.val_list": str(tmp_path / "val.txt")}
    with pytest.raises(UserError, match=r"small\.png: mask size 10x10 != image size 72x64"):
        build_datasets(apply_overrides(tiny_cfg, over))


def test_corrupt_image_and_bad_label_fail_at_load(tiny_cfg, demo_root, tmp_path):
    root = tmp_path / "voc"
    shutil.copytree(demo_root / "voc", root)
    cfg = apply_overrides(tiny_cfg, {"data.root": str(root)})
    td = build_datasets(cfg)
    img = td.labelled.samples[0].image
    img.write_bytes(img.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(UserError, match=f"{img.name}: cannot read image"):
        td.labelled[0]
    mask_path = td.labelled.samples[1].mask
    m = np.array(Image.open(mask_path))
    m[0, 0] = 30
    save_mask(mask_path, m)
    with pytest.raises(UserError, match=f"{mask_path.name}: label value 30 outside 0..20"):
        td.labelled[1]


def test_worker_errors_keep_one_line_naming_the_file(tiny_cfg, demo_root, tmp_path):
    root = tmp_path / "voc"
    shutil.copytree(demo_root / "voc", root)
    td = build_datasets(apply_overrides(tiny_cfg, {"data.root": str(root)}))
    for s in td.unlabelled.samples:
        s.image.write_bytes(b"garbage")
    loader = torch.utils.data.DataLoader(td.unlabelled, batch_size=2, num_workers=1)
    with pytest.raises(UserError) as e:
        next(iter(loader))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(root)) and "cannot read image" in msg
