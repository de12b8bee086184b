"""ImageNet weights for model.pretrained=torchvision: lookup folders, `npsemiseg fetch-weights`, hash check.

No internet: the "download" reads a locally made weights file through a file:// URL or a folder.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torchvision

from npsemiseg.cli import main
from npsemiseg.errors import UserError
from npsemiseg.models import weights as W
from npsemiseg.models.cli import recipe_backbones


@pytest.fixture
def no_cache(tmp_path, monkeypatch):
    """An empty torch hub cache and no NPSEMISEG_WEIGHTS_DIR."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv(W.WEIGHTS_ENV, raising=False)
    return tmp_path


def _mirror(tmp_path: Path) -> tuple[Path, str, dict]:
    """A folder holding a resnet18 state dict under torchvision's file name (its hash will not match)."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    sd = torchvision.models.resnet18().state_dict()
    name = W.weight_files("resnet18")[0]
    torch.save(sd, mirror / name)
    return mirror, name, sd


def test_lookup_order_env_dir_then_hub_cache(no_cache, monkeypatch):
    assert W.find_weights("resnet50") is None
    with pytest.raises(UserError, match=r"resnet50-.*\.pth not found in .*hub/checkpoints; fetch it with: "
                                        r"npsemiseg fetch-weights"):
        W.require_weights("resnet50")
    name = W.weight_files("resnet50")[0]
    assert name.startswith("resnet50-") and name.endswith(".pth")
    hub = no_cache / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / name).write_bytes(b"x")
    assert W.find_weights("resnet50") == hub / name
    own = no_cache / "own"
    own.mkdir()
    (own / name).write_bytes(b"y")
    monkeypatch.setenv(W.WEIGHTS_ENV, str(own))
    assert W.weight_dirs()[0] == own and W.find_weights("resnet50") == own / name


def test_fetch_from_file_url_and_folder_then_training_finds_them(no_cache, monkeypatch):
    mirror, name, sd = _mirror(no_cache)
    out = no_cache / "weights"
    # the hash in torchvision's name cannot match a locally made file: the check must refuse it, storing nothing
    with pytest.raises(UserError, match="SHA-256 does not match"):
        W.fetch_weights(["resnet18"], str(out), source=mirror.as_uri() + "/")
    assert not out.exists() or not any(out.iterdir())
    got = W.fetch_weights(["resnet18"], str(out), source=mirror.as_uri(), check_hash=False)
    assert got == [str(out / name)] and (out / name).read_bytes() == (mirror / name).read_bytes()
    got = W.fetch_weights(["resnet18"], str(no_cache / "w2"), source=str(mirror), check_hash=False)
    assert Path(got[0]).is_file()
    # already present: kept, the source is not even read (setup commands run on every node at each `ray up`)
    assert W.fetch_weights(["resnet18"], str(out), source=str(no_cache / "nowhere"), check_hash=False) == got[:0] + [
        str(out / name)]
    monkeypatch.setenv(W.WEIGHTS_ENV, str(out))
    from npsemiseg.config import Config, apply_overrides
    from npsemiseg.models.build import build_model

    cfg = apply_overrides(Config(), {"model.backbone": "resnet18", "model.width": 64, "model.head": "plain",
                                     "model.pretrained": "torchvision", "model.aspp_channels": 16})
    model = build_model(cfg.model, 21)
    assert torch.equal(model.encoder.backbone.conv1.weight, sd["conv1.weight"])


def test_hash_check_accepts_a_matching_name(tmp_path):
    f = tmp_path / "blob"
    f.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    assert W.sha256_prefix_ok(f, f"resnet18-{digest[:8]}.pth")
    assert not W.sha256_prefix_ok(f, "resnet18-00000000.pth")


def test_cli_fetch_weights(no_cache, capsys):
    mirror, name, _ = _mirror(no_cache)
    rc = main(["fetch-weights", "--out", str(no_cache / "w"), "--from", str(no_cache / "nowhere"),
               "--backbone", "resnet18"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--from: cannot fetch" in err and name in err
    rc = main(["fetch-weights", "--out", str(no_cache / "w"), "--from", str(mirror), "--backbone", "resnet18"])
    assert rc == 2 and "SHA-256 does not match" in capsys.readouterr().err


def test_recipes_needing_weights():
    assert recipe_backbones() == ["resnet101", "resnet50"]
