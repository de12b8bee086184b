"""Cityscapes: the official labelId -> trainId table, the converter (+ CLI), and the reader."""
from __future__ import annotations

import numpy as np
import pytest

from npsemiseg.cli import main
from npsemiseg.data.cityscapes import (
    CityscapesTree,
    convert_trainids,
    labelids_to_trainids,
    trainid_lut,
)
from npsemiseg.data.io import read_mask, save_image, save_mask
from npsemiseg.errors import UserError


def test_official_table():
    lut = trainid_lut()
    # (labelId, trainId) pairs from cityscapesScripts' labels.py
    expected = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    for label_id in range(34):
        assert lut[label_id] == expected.get(label_id, 255), label_id
    assert sorted(lut[list(expected)]) == list(range(19))
    assert labelids_to_trainids(np.array([-1, 7, 33, 0, 300])).tolist() == [255, 0, 18, 255, 255]


def _write_city(root, label_ids):
    img = np.zeros((*label_ids.shape, 3), np.uint8)
    save_image(root / "leftImg8bit/train/ulm/ulm_000000_000001_leftImg8bit.png", img)
    save_image(root / "leftImg8bit/val/bonn/bonn_000000_000002_leftImg8bit.png", img)
    save_mask(root / "gtFine/train/ulm/ulm_000000_000001_gtFine_labelIds.png", label_ids, palette=False)
    save_mask(root / "gtFine/val/bonn/bonn_000000_000002_gtFine_labelIds.png", label_ids, palette=False)


def test_convert_and_read(tmp_path):
    ids = np.array([[0, 1, 7, 8], [26, 255, 33, 9]], np.uint8)  # 255 = license plate (-1)
    _write_city(tmp_path, ids)
    with pytest.raises(UserError, match="cityscapes-trainids"):
        CityscapesTree(tmp_path)  # trainIds not generated yet: the error says how
    assert convert_trainids(tmp_path) == 2
    out = read_mask(tmp_path / "gtFine/train/ulm/ulm_000000_000001_gtFine_labelTrainIds.png")
    assert out.tolist() == [[255, 255, 0, 1], [13, 255, 18, 255]]
    tree = CityscapesTree(tmp_path)
    assert [s.id for s in tree.train_pool()] == ["ulm/ulm_000000_000001"]
    assert [s.id for s in tree.val_samples()] == ["bonn/bonn_000000_000002"]
    for token in ("leftImg8bit/train/ulm/ulm_000000_000001_leftImg8bit.png", "ulm_000000_000001",
                  "ulm/ulm_000000_000001"):
        assert tree.id_from_token(token) == "ulm/ulm_000000_000001"


def test_convert_rejects_unknown_ids(tmp_path):
    _write_city(tmp_path, np.array([[7, 40]], np.uint8))
    with pytest.raises(UserError, match="label id 40"):
        convert_trainids(tmp_path)


def test_cli_converts_and_reports_bad_root(tmp_path, capsys):
    _write_city(tmp_path, np.array([[7, 8]], np.uint8))
    assert main(["cityscapes-trainids", str(tmp_path)]) == 0
    assert "wrote 2" in capsys.readouterr().out
    assert main(["cityscapes-trainids", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err and "Traceback" not in err


def test_cli_corrupt_label_file_is_one_line(tmp_path, capsys):
    _write_city(tmp_path, np.array([[7, 8]], np.uint8))
    bad = tmp_path / "gtFine/val/bonn/bonn_000000_000002_gtFine_labelIds.png"
    bad.write_bytes(bad.read_bytes()[:30])  # truncated PNG
    assert main(["cityscapes-trainids", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and bad.name in err and "Traceback" not in err
    assert not list(tmp_path.rglob("*.tmp"))  # no half-written output
