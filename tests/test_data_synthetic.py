"""make_demo_data: real VOC/Cityscapes layouts, determinism, nuisance design, atomic output, CLI errors."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

import npsemiseg.data.synthetic as synthetic
from npsemiseg.cli import main
from npsemiseg.data.cityscapes import trainid_lut
from npsemiseg.data.synthetic import boundary_ring, make_demo_data
from npsemiseg.errors import UserError


def _digest(root) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_voc_tree_layout(demo_root):
    base = demo_root / "voc/VOCdevkit/VOC2012"
    summary = json.loads((demo_root / "summary.json").read_text())
    assert summary["scale"] == "tiny" and summary["seed"] == 0
    sets = base / "ImageSets/Segmentation"
    train, val = (sets / "train.txt").read_text().split(), (sets / "val.txt").read_text().split()
    extra = (sets / "train_unlabelled.txt").read_text().split()
    assert (len(train), len(val), len(extra)) == (10, 8, 8)
    assert (sets / "trainval.txt").read_text().split() == train + val
    assert len(list((base / "JPEGImages").glob("*.jpg"))) == 10 + 10 + 8 + 8
    for i in extra:
        assert not (base / "SegmentationClass" / f"{i}.png").exists()
        assert not (base / "SegmentationClassAug" / f"{i}.png").exists()
    fine = Image.open(base / "SegmentationClass" / f"{train[0]}.png")
    aug = Image.open(base / "SegmentationClassAug" / f"{train[0]}.png")
    assert fine.mode == "P" and aug.mode == "L"
    f, a = np.array(fine), np.array(aug)
    assert (f == 255).any() and not (a == 255).any()
    assert np.array_equal(f[f != 255], a[f != 255])  # same labels, fine adds boundary rings
    present = set()
    for p in (base / "SegmentationClassAug").glob("*.png"):
        present |= set(np.unique(np.array(Image.open(p))).tolist())
    assert present <= {0, 1, 5, 8, 12, 15, 19} and len(present) >= 5
    t = summary["voc"]["nuisance"]
    assert max(t[i] for i in train) <= 0.55 and max(t[i] for i in val + extra) > 0.55


def test_cityscapes_tree_and_conversion(demo_root):
    root = demo_root / "cityscapes"
    label_files = sorted(root.glob("gtFine/*/*/*_gtFine_labelIds.png"))
    assert len(label_files) == 16 and len(list(root.glob("leftImg8bit/train/*/*_leftImg8bit.png"))) == 12
    seen = set()
    lut = trainid_lut()
    for p in label_files:
        ids = np.array(Image.open(p))
        seen |= set(np.unique(ids).tolist())
        train = np.array(Image.open(str(p).replace("_labelIds", "_labelTrainIds")))
        assert np.array_equal(train, lut[ids])
    assert {0, 1, 255} <= seen  # void ids and the licence plate (-1 stored as 255)
    assert {7, 8, 11, 23, 26} <= seen


def test_boundary_ring():
    m = np.zeros((6, 6), np.uint8)
    m[2:4, 2:4] = 3
    r = boundary_ring(m)
    assert (r == 255).sum() > 0 and set(np.unique(r).tolist()) == {0, 3, 255}
    assert r[0, 0] == 0 and (r[m == 0] != 3).all()


def test_deterministic_and_seed_dependent(tmp_path):
    make_demo_data(tmp_path / "a", "tiny", seed=3)
    make_demo_data(tmp_path / "b", "tiny", seed=3)
    make_demo_data(tmp_path / "c", "tiny", seed=4)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_errors_leave_nothing_half_written(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "_write_city", boom)
    with pytest.raises(RuntimeError):
        make_demo_data(tmp_path / "out", "tiny")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="unknown scale 'huge'"):
        make_demo_data(tmp_path / "out", "huge")


def test_cli(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["make-demo-data", "--out", str(out), "--scale", "tiny", "--seed", "1"]) == 0
    assert (out / "voc/VOCdevkit/VOC2012/JPEGImages").is_dir() and (out / "cityscapes/gtFine").is_dir()
    before = _digest(out)
    capsys.readouterr()
    assert main(["make-demo-data", "--out", str(out), "--scale", "tiny"]) == 2  # not empty, no --force
    err = capsys.readouterr().err
    assert "not empty" in err and err.count("\n") == 1 and "Traceback" not in err
    assert _digest(out) == before
    assert main(["make-demo-data", "--out", str(out), "--scale", "tiny", "--seed", "2", "--force"]) == 0
    assert json.loads((out / "summary.json").read_text())["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no temp or old folders left


def test_tiny_tree_is_learnable(tiny_cfg):
    """A small CNN trained for 40 steps on the tiny tree's labelled images beats chance clearly on val."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from npsemiseg.config import apply_overrides
    from npsemiseg.data.build import build_datasets
    from npsemiseg.data.seeding import loader_seed_kwargs

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: one thread is faster than two on a shared 2-core box
    cfg = apply_overrides(tiny_cfg, {"data.split": "demo/1_2", "data.scale_min": 0.75, "data.scale_max": 1.5,
                                     "data.val_limit": 0})
    td = build_datasets(cfg)

    def block(i: int, o: int, s: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, s, 1), nn.BatchNorm2d(o), nn.ReLU())

    net = nn.Sequential(block(3, 12, 1), block(12, 24, 2), block(24, 24, 2), nn.Conv2d(24, 21, 1))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    loader = torch.utils.data.DataLoader(td.labelled, batch_size=4, shuffle=True, drop_last=True,
                                         **loader_seed_kwargs(0))
    step = 0
    while step < 40:
        for b in loader:
            out = F.interpolate(net(b["image"]), size=b["mask"].shape[-2:], mode="bilinear")
            loss = F.cross_entropy(out, b["mask"], ignore_index=255)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    net.eval()
    torch.set_num_threads(threads)
    cm = torch.zeros(21, 21)
    with torch.no_grad():
        for i in range(len(td.val)):
            v = td.val[i]
            pred = F.interpolate(net(v["image"][None]), size=v["mask"].shape, mode="bilinear").argmax(1)[0]
            keep = v["mask"] != 255
            cm += torch.bincount(v["mask"][keep] * 21 + pred[keep], minlength=441).reshape(21, 21)
    present = cm.sum(1) > 0
    iou = cm.diag() / (cm.sum(0) + cm.sum(1) - cm.diag()).clamp(min=1)
    assert iou[present].mean() > 0.3, iou[present]
