"""Model subcommand: ``npsemiseg fetch-weights`` (ImageNet weights for ``model.pretrained: torchvision``).

    npsemiseg fetch-weights --out ~/.cache/torch/hub/checkpoints           # every backbone a recipe needs
    npsemiseg fetch-weights --out s3://BUCKET/npsemiseg/weights --backbone resnet50
    npsemiseg fetch-weights --from s3://BUCKET/npsemiseg/weights --out ~/.cache/torch/hub/checkpoints
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from npsemiseg.errors import UserError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def recipe_backbones(folder: Path = CONFIGS) -> list[str]:
    """Backbones of the recipes in ``configs/*.yaml`` that set ``model.pretrained: torchvision``."""
    out = set()
    for path in sorted(folder.glob("*.yaml")):
        model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
        if model.get("pretrained") == "torchvision":
            out.add(str(model.get("backbone", "resnet50")))
    return sorted(out) or ["resnet50", "resnet101"]


def _fetch(args: argparse.Namespace) -> int:
    from npsemiseg.models.weights import DOWNLOAD_BASE, fetch_weights

    depths = [d.strip() for d in (args.backbone or "").split(",") if d.strip()] or recipe_backbones()
    if not args.out:
        raise UserError("--out: give a folder or a storage URI (s3://bucket/prefix) to store the weights in")
    for dst in fetch_weights(depths, args.out, source=args.source or DOWNLOAD_BASE):
        print(f"[weights] {dst}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("fetch-weights", help="fetch torchvision's ImageNet ResNet weights into a folder or bucket")
    p.add_argument("--out", required=True, help="folder (e.g. ~/.cache/torch/hub/checkpoints) or s3://.../weights")
    p.add_argument("--from", dest="source", help="where to copy from: a URL base, a storage URI or a folder "
                                                 "(default https://download.pytorch.org/models/)")
    p.add_argument("--backbone", help="comma-separated backbones (default: those the recipes in configs/ need)")
    p.set_defaults(func=_fetch)
