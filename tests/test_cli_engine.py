"""`npsemiseg train / evaluate / predict / export` end to end on tiny synthetic data, recipes, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from npsemiseg.cli import main
from npsemiseg.config import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(demo_root, tmp_path_factory):
    """A 2-step run of configs/demo.yaml shrunk to the tiny test model, trained through the CLI."""
    from conftest import TINY_OVERRIDES

    out = tmp_path_factory.mktemp("cli_run")
    over = {**TINY_OVERRIDES, "data.root": str(demo_root / "voc"), "out_dir": str(out / "run"), "device": "cpu",
            "train.iters": 2, "train.eval_every": 2}
    rc = main(["train", "--config", str(REPO / "configs" / "demo.yaml"), *[f"{k}={v}" for k, v in over.items()]])
    assert rc == 0
    return out / "run" / "checkpoints" / "last.pt"


def _val_images(demo_root: Path, n: int = 2) -> list[Path]:
    base = demo_root / "voc" / "VOCdevkit" / "VOC2012"
    ids = (base / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[:n]
    return [base / "JPEGImages" / f"{i}.jpg" for i in ids]


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_recipe_loads(recipe):
    cfg = load_config(REPO / "configs" / recipe, {"model.pretrained": ""})
    assert cfg.name and cfg.train.iters > 0
    if recipe.startswith("voc"):
        assert (cfg.data.crop_size, cfg.train.lr, cfg.train.head_lr_mult, cfg.train.conf_threshold) == (
            480, 0.001, 10.0, 0.95)
        assert (cfg.model.t_train, cfg.model.t_eval, cfg.model.bank_capacity, cfg.model.latent_dim) == (5, 20, 2560, 32)
    if recipe.startswith("cityscapes"):
        assert cfg.train.ohem and cfg.train.weight_decay == 5e-4 and cfg.train.val_mode == "sliding_window"


def test_train_writes_checkpoint_and_tensorboard(trained, capsys):
    ckpt = torch.load(trained, weights_only=True)
    assert ckpt["step"] == 2 and ckpt["config"]["name"] == "demo"
    assert "val/miou" in ckpt["metrics"] and 0.0 <= ckpt["metrics"]["val/miou"] <= 1.0
    assert any((trained.parents[1] / "tb").iterdir())
    best = torch.load(trained.parent / "best.pt", weights_only=True)  # the only evaluation is also the best
    assert best["step"] == 2 and best["best_step"] == 2


def test_export_roundtrip_and_predict_from_both(trained, demo_root, tmp_path, capsys):
    exp = tmp_path / "export"
    assert main(["export", "--checkpoint", str(trained), "--out", str(exp)]) == 0
    assert sorted(p.name for p in exp.iterdir()) == ["config.yaml", "metrics.json", "model.pt"]
    blob = torch.load(exp / "model.pt", weights_only=True)
    teacher = torch.load(trained, weights_only=True)["teacher"]
    assert blob["model"].keys() == teacher.keys() and all(torch.equal(blob["model"][k], v) for k, v in teacher.items())
    assert "optimizer" not in blob and int(blob["model"]["head.context_bank.count"].sum()) > 0
    assert load_config(exp / "config.yaml").model.pretrained == ""
    assert json.loads((exp / "metrics.json").read_text())["step"] == 2

    images = _val_images(demo_root)
    out_c, out_e = tmp_path / "pred_ckpt", tmp_path / "pred_export"
    for src, dst in ((trained, out_c), (exp, out_e)):
        assert main(["predict", "--checkpoint", str(src), *map(str, images), "--out", str(dst), "--samples", "3"]) == 0
    for img in images:
        w, h = Image.open(img).size
        mask = Image.open(out_c / f"{img.stem}_mask.png")
        unc = Image.open(out_c / f"{img.stem}_uncertainty.png")
        probs = np.load(out_c / f"{img.stem}.npy")
        assert mask.mode == "P" and mask.size == (w, h) and unc.mode == "P" and unc.size == (w, h)
        assert probs.dtype == np.float32 and probs.shape == (21, h, w)
        assert np.allclose(probs.sum(0), 1.0, atol=1e-4) and probs.min() >= 0.0
        assert np.array_equal(np.asarray(mask), probs.argmax(0))
        ent = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(0) / np.log(21)
        assert np.abs(np.asarray(unc).astype(float) - ent * 255).max() <= 1.0
        # the export predicts exactly what the checkpoint predicts
        assert np.array_equal(np.load(out_e / f"{img.stem}.npy"), probs)


def test_evaluate_prints_metrics(trained, demo_root, capsys):
    rc = main(["evaluate", "--checkpoint", str(trained), "--data-root", str(demo_root / "voc"), "--samples", "2",
               "train.val_mode=sliding_window", "data.crop_size=48", "--json"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "sliding_window, T=2, 4 val images" in out and "val/miou" in out
    metrics = json.loads(out.strip().splitlines()[-1])
    assert 0.0 <= metrics["val/miou"] <= 1.0 and "val/iou/0" in metrics


def _one_line_error(capsys, argv: list[str], needle: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("npsemiseg: error:") and needle in err, err


def test_bad_paths_and_files_exit_2_with_one_line(trained, demo_root, tmp_path, capsys):
    img = str(_val_images(demo_root, 1)[0])
    out = str(tmp_path / "o")
    _one_line_error(capsys, ["predict", "--checkpoint", str(tmp_path / "nope.pt"), img, "--out", out], "nope.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(trained.read_bytes()[:2000])
    _one_line_error(capsys, ["predict", "--checkpoint", str(corrupt), img, "--out", out], "corrupt.pt")
    _one_line_error(capsys, ["export", "--checkpoint", str(corrupt), "--out", out], "corrupt.pt")
    _one_line_error(capsys, ["evaluate", "--checkpoint", str(tmp_path)], "not an export dir")
    _one_line_error(capsys, ["predict", "--checkpoint", str(trained), str(tmp_path / "x.jpg"), "--out", out], "x.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(Path(img).read_bytes()[:300])
    _one_line_error(capsys, ["predict", "--checkpoint", str(trained), str(broken), "--out", out], "broken.jpg")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())  # nothing half-written
    _one_line_error(capsys, ["train", "--config", str(tmp_path / "none.yaml")], "none.yaml")
