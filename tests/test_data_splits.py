"""Split protocols: counts, determinism, published-file loading, validation errors, make-splits CLI."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from npsemiseg.cli import main
from npsemiseg.data.splits import (
    PROTOCOLS,
    generate_split,
    get_protocol,
    load_split,
    resolve_split,
    split_checksum,
)
from npsemiseg.data.tree import DataTree, Sample
from npsemiseg.data.voc import VOCTree
from npsemiseg.errors import UserError


class FakeTree(DataTree):
    """In-memory pools of real-dataset sizes (no files): enough for split generation."""

    def __init__(self, name: str, n_pool: int, n_fine: int = 0) -> None:
        super().__init__(Path("/nowhere"))
        self.name = name
        self._pool = {f"{i:05d}": Sample(f"{i:05d}", Path(f"/nowhere/{i:05d}.jpg"), Path("m.png"))
                      for i in range(n_pool)}
        self._fine = [f"{i:05d}" for i in range(0, 2 * n_fine, 2)]

    def fine_ids(self) -> list[str]:
        return self._fine


@pytest.mark.parametrize("tag,voc,city", [("1_16", 662, 186), ("1_8", 1323, 372), ("1_4", 2646, 744),
                                          ("1_2", 5291, 1488)])
def test_fraction_counts_match_the_literature(tag, voc, city):
    for kind in ("blended_cps", "blended_u2pl"):
        assert get_protocol(f"voc/{kind}/{tag}").n_labelled(10582) == voc
    assert get_protocol(f"cityscapes/{tag}").n_labelled(2975) == city


def test_registry_names():
    expected = {f"voc/classic/{n}" for n in (92, 183, 366, 732, 1464)}
    for tag in ("1_16", "1_8", "1_4", "1_2"):
        expected |= {f"voc/blended_cps/{tag}", f"voc/blended_u2pl/{tag}", f"cityscapes/{tag}", f"demo/{tag}"}
    assert set(PROTOCOLS) == expected
    with pytest.raises(UserError, match="data.split: unknown protocol 'voc/classic/93'"):
        get_protocol("voc/classic/93")
    with pytest.raises(UserError, match="is for dataset voc, not cityscapes"):
        get_protocol("voc/classic/92", "cityscapes")


def test_classic_and_u2pl_draw_from_fine_images():
    tree = FakeTree("voc", 10582, n_fine=1464)
    fine = set(tree.fine_ids())
    classic = generate_split(tree, get_protocol("voc/classic/92"), seed=3)
    assert classic.info.n_labelled == 92 and classic.info.n_unlabelled == 10582 - 92
    assert {s.id for s in classic.labelled} <= fine
    u_small = generate_split(tree, get_protocol("voc/blended_u2pl/1_16"), seed=3)
    assert len(u_small.labelled) == 662 and {s.id for s in u_small.labelled} <= fine
    u_big = generate_split(tree, get_protocol("voc/blended_u2pl/1_4"), seed=3)
    assert len(u_big.labelled) == 2646 and fine <= {s.id for s in u_big.labelled}
    cps = generate_split(tree, get_protocol("voc/blended_cps/1_4"), seed=3)
    assert len(cps.labelled) == 2646 and not fine <= {s.id for s in cps.labelled}


def test_generation_is_deterministic_and_disjoint():
    tree = FakeTree("cityscapes", 2975)
    proto = get_protocol("cityscapes/1_8")
    a, b, c = (generate_split(tree, proto, seed=s) for s in (0, 0, 1))
    assert a.info.checksum == b.info.checksum != c.info.checksum
    lab, unl = {s.id for s in a.labelled}, {s.id for s in a.unlabelled}
    assert len(lab) == 372 and not lab & unl and len(lab | unl) == 2975
    assert a.info.checksum == split_checksum(sorted(lab, reverse=True), list(unl))  # order-free


@pytest.fixture
def voc_tree(demo_root) -> VOCTree:
    return VOCTree(demo_root / "voc")


def test_demo_pools(voc_tree):
    pool = voc_tree.train_pool()
    annotated = voc_tree.annotated_pool()
    assert len(pool) == 28 and len(annotated) == 20 and len(voc_tree.val_samples()) == 8
    split = generate_split(voc_tree, get_protocol("demo/1_4"))
    assert split.info.n_labelled == 5 and split.info.n_unlabelled == 23
    assert all(s.mask is not None for s in split.labelled)
    assert sum(s.mask is None for s in split.unlabelled) == 8  # mask-less extras only ever unlabelled


def _write(d: Path, lab: list[str], unl: list[str]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "labeled.txt").write_text("".join(x + "\n" for x in lab))
    (d / "unlabeled.txt").write_text("".join(x + "\n" for x in unl))
    return d


def test_load_both_published_formats(voc_tree, tmp_path):
    gen = generate_split(voc_tree, get_protocol("demo/1_4"), seed=5)
    lab, unl = [s.id for s in gen.labelled], [s.id for s in gen.unlabelled]
    long_form = _write(tmp_path / "a", [f"JPEGImages/{i}.jpg SegmentationClass/{i}.png" for i in lab],
                       [f"JPEGImages/{i}.jpg" for i in unl])
    bare = _write(tmp_path / "b", lab[::-1], unl)
    for d in (long_form, bare):
        loaded = load_split(voc_tree, get_protocol("demo/1_4"), d)
        assert loaded.info.checksum == gen.info.checksum
        assert loaded.info.source == str(d)


def test_split_file_errors_name_file_and_line(voc_tree, tmp_path):
    proto = get_protocol("demo/1_4")
    gen = generate_split(voc_tree, proto)
    lab, unl = [s.id for s in gen.labelled], [s.id for s in gen.unlabelled]
    cases = {
        "missing": (lab[:2] + ["2026_099999"] + lab[2:], unl, r"labeled\.txt:3: image not found"),
        "overlap": (lab, unl[:3] + [lab[1]], r"unlabeled\.txt:4: .* is also labelled \(labeled\.txt:2\)"),
        "count": (lab[:-1], unl, r"labeled\.txt: 4 labelled images, protocol demo/1_4 expects 5"),
        "val": (lab, unl + [voc_tree.val_samples()[0].id], r"unlabeled\.txt:24: .* is a val image"),
        "nomask": (lab[:-1] + [next(s.id for s in gen.unlabelled if s.mask is None)], unl,
                   r"labeled\.txt:5: labelled image .* has no mask"),
        "dup": (lab + [lab[0]], unl, r"labeled\.txt:6: .* listed twice"),
    }
    for name, (a, b, pattern) in cases.items():
        with pytest.raises(UserError, match=pattern):
            load_split(voc_tree, proto, _write(tmp_path / name, a, b))
    with pytest.raises(UserError, match="split folder not found"):
        resolve_split(voc_tree, "demo/1_4", split_dir=str(tmp_path / "none"))


def test_make_splits_cli_roundtrip(demo_root, tmp_path, capsys):
    out = tmp_path / "splits"
    argv = ["make-splits", "--dataset", "voc", "--root", str(demo_root / "voc"), "--split", "demo/1_8",
            "--seed", "2", "--out", str(out)]
    assert main(argv) == 0
    info = json.loads((out / "split.json").read_text())
    assert info["name"] == "demo/1_8" and info["n_labelled"] == 3 and info["seed"] == 2
    first = (out / "labeled.txt").read_text().splitlines()[0]
    assert first.startswith("JPEGImages/") and " SegmentationClass" in first
    loaded = resolve_split(VOCTree(demo_root / "voc"), "demo/1_8", split_dir=str(out))
    assert loaded.info.checksum == info["checksum"]
    assert main(argv) == 0  # rerun over an earlier split is allowed
    capsys.readouterr()


def test_make_splits_cli_errors_write_nothing(demo_root, tmp_path, capsys):
    base = ["make-splits", "--root", str(demo_root / "voc"), "--out", str(tmp_path / "o")]
    for extra, needle in ((["--split", "voc/nope"], "unknown protocol"),
                          (["--split", "voc/classic/92"], "needs 92 fine images"),
                          (["--split", "demo/1_4", "--root", str(tmp_path / "missing")], "data root not found")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("x")
    assert main(base + ["--split", "demo/1_4"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["keep.txt"]


def test_voc_tree_rejects_val_in_train(demo_root, tmp_path):
    root = tmp_path / "voc"
    shutil.copytree(demo_root / "voc", root)
    sets = root / "VOCdevkit/VOC2012/ImageSets/Segmentation"
    val0 = (sets / "val.txt").read_text().split()[0]
    with open(sets / "train.txt", "a") as f:
        f.write(val0 + "\n")
    with pytest.raises(UserError, match="val ids are also in the train pool"):
        VOCTree(root)


def test_make_splits_cli_names_list_line_of_missing_image(demo_root, tmp_path, capsys):
    root = tmp_path / "voc"
    shutil.copytree(demo_root / "voc", root)
    sets = root / "VOCdevkit/VOC2012/ImageSets/Segmentation"
    ids = (sets / "train.txt").read_text().split()
    (root / f"VOCdevkit/VOC2012/JPEGImages/{ids[2]}.jpg").unlink()
    assert main(["make-splits", "--root", str(root), "--split", "demo/1_4", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.txt:3: image not found" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_voc_pool_without_train_aug_list(demo_root, tmp_path):
    root = tmp_path / "voc"
    shutil.copytree(demo_root / "voc", root)
    sets = root / "VOCdevkit/VOC2012/ImageSets/Segmentation"
    with_list = VOCTree(root)
    (sets / "train_aug.txt").unlink()  # derive the pool from SegmentationClassAug instead
    derived = VOCTree(root)
    assert [s.id for s in derived.train_pool()] == [s.id for s in with_list.train_pool()]
    assert [s.mask for s in derived.annotated_pool()] == [s.mask for s in with_list.annotated_pool()]
    fine = set(derived.fine_ids())
    assert all(s.mask.parent.name == ("SegmentationClass" if s.id in fine else "SegmentationClassAug")
               for s in derived.annotated_pool())
