"""Readers and writers of npsemiseg.data.io: values, modes, and one-line errors naming the file."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from npsemiseg.data.io import (
    check_labels,
    image_size,
    read_image,
    read_mask,
    save_image,
    save_mask,
    voc_palette,
    write_text,
)
from npsemiseg.errors import UserError


def test_voc_palette_known_colours():
    pal = np.array(voc_palette()).reshape(256, 3)
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]  # aeroplane
    assert pal[15].tolist() == [192, 128, 128]  # person
    assert pal[255].tolist() == [224, 224, 192]  # VOC boundary colour


def test_mask_roundtrip_palette_and_gray(tmp_path):
    m = np.array([[0, 1, 255], [20, 4, 5]], np.uint8)
    save_mask(tmp_path / "p.png", m, palette=True)
    save_mask(tmp_path / "g.png", m, palette=False)
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert Image.open(tmp_path / "g.png").mode == "L"
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png", 21), m)
    np.testing.assert_array_equal(read_mask(tmp_path / "g.png", 21), m)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_image_roundtrip_png_exact(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    save_image(tmp_path / "x.png", img)
    out = read_image(tmp_path / "x.png")
    np.testing.assert_array_equal(out, img)
    assert out.flags.writeable
    assert image_size(tmp_path / "x.png") == (5, 7)


def test_label_out_of_range_names_file_and_value(tmp_path):
    m = np.zeros((4, 4), np.uint8)
    m[2, 2] = 21
    save_mask(tmp_path / "bad.png", m)
    with pytest.raises(UserError, match=r"bad\.png: label value 21 outside 0\.\.20"):
        read_mask(tmp_path / "bad.png", 21)
    m[2, 2] = 254  # reserved for padding, never ground truth
    with pytest.raises(UserError, match="label value 254"):
        check_labels(m, 21, "x")
    check_labels(np.array([[0, 20, 255]], np.uint8), 21, "ok")


def test_rgb_mask_rejected(tmp_path):
    Image.new("RGB", (4, 4), (128, 0, 0)).save(tmp_path / "c.png")
    with pytest.raises(UserError, match="mode RGB"):
        read_mask(tmp_path / "c.png")


def test_truncated_and_corrupt_images(tmp_path):
    img = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    save_image(tmp_path / "ok.jpg", img)
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    for name in ("trunc.jpg", "junk.jpg"):
        with pytest.raises(UserError) as e:
            read_image(tmp_path / name)
        assert name in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="image not found"):
        read_image(tmp_path / "missing.jpg")


def test_write_text_atomic_keeps_old_on_error(tmp_path, monkeypatch):
    target = tmp_path / "f.txt"
    write_text(target, "old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("pathlib.Path.write_text", boom)
    with pytest.raises(OSError):
        write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
