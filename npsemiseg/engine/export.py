"""Inference-only export and the loader that reads either a full checkpoint or an export dir.

    npsemiseg export --checkpoint runs/demo/checkpoints/last.pt --out exports/demo

An export dir holds ``model.pt`` (``{"format", "model": eval weights incl. memory banks, "num_classes"}``, SyncBN
converted to BN, no optimiser), ``config.yaml`` (the run's config, ``model.pretrained`` cleared) and
``metrics.json``. The eval weights are the teacher's when ``train.eval_model`` is teacher (the default).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from npsemiseg.config import Config, apply_overrides, config_from_dict, load_config
from npsemiseg.engine.checkpoint import load_checkpoint
from npsemiseg.errors import UserError
from npsemiseg.fileio import atomic_dir

EXPORT_FORMAT = "npsemiseg-export-v1"
MODEL_FILE, CONFIG_FILE, METRICS_FILE = "model.pt", "config.yaml", "metrics.json"


def _inference_config(data: dict[str, Any], overrides: list[str] | None = None) -> Config:
    data = json.loads(json.dumps(data))  # deep copy
    data.setdefault("model", {})["pretrained"] = ""  # weights come from the checkpoint, never from ImageNet
    cfg = config_from_dict(data)
    return apply_overrides(cfg, overrides) if overrides else cfg


def eval_weights(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights used for evaluation: the teacher's (train.eval_model=teacher) or the student's."""
    which = ckpt.get("config", {}).get("train", {}).get("eval_model", "teacher")
    return ckpt["teacher"] if which == "teacher" and "teacher" in ckpt else ckpt["model"]


def _json_safe(metrics: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        if isinstance(v, (int, float, str, bool)) or v is None:
            out[k] = v
    return out


def load_for_inference(path: str | os.PathLike, overrides: list[str] | None = None,
                       device: str | torch.device = "cpu") -> tuple[nn.Module, Config, dict[str, Any]]:
    """(model in eval mode, config, metrics) from a full checkpoint file, an export dir or its model.pt.

    Every problem a user can cause (missing path, corrupt file, weights that do not fit the config) is a
    UserError naming the path.
    """
    from npsemiseg.models import build_model

    p = Path(path)
    if p.is_dir():
        mfile, cfile = p / MODEL_FILE, p / CONFIG_FILE
        if not mfile.is_file() or not cfile.is_file():
            raise UserError(f"{p}: not an export dir (needs {MODEL_FILE} and {CONFIG_FILE})")
        cfg = load_config(cfile, overrides)
        blob = load_checkpoint(mfile)
        if blob.get("format") != EXPORT_FORMAT:
            raise UserError(f"{mfile}: not an npsemiseg export (format {blob.get('format')!r})")
        weights, n_cls = blob["model"], int(blob["num_classes"])
        metrics = blob.get("metrics", {})
    elif p.is_file():
        blob = load_checkpoint(p)
        if blob.get("format") == EXPORT_FORMAT:
            return load_for_inference(p.parent, overrides, device)
        missing = [k for k in ("model", "config") if k not in blob]
        if missing:
            raise UserError(f"{p}: not an npsemiseg checkpoint (missing {', '.join(missing)})")
        cfg = _inference_config(blob["config"], overrides)
        weights = eval_weights(blob)
        n_cls = int(blob.get("num_classes") or cfg.num_classes())
        metrics = blob.get("metrics", {})
    else:
        raise UserError(f"{p}: checkpoint or export dir not found")
    model = build_model(cfg.model, n_cls)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise UserError(f"{p}: weights do not match the config ({str(e).splitlines()[0][:160]})") from None
    return model.to(device).eval(), cfg, dict(metrics)


def export_model(ckpt: str | os.PathLike | dict[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write an inference-only export dir from a checkpoint path or dict; returns ``out_dir``.

    The dir is assembled in a temp folder beside ``out_dir`` and renamed into place, replacing an older export.
    """
    from npsemiseg.models import build_model, convert_syncbn_to_bn

    src = "checkpoint"
    if not isinstance(ckpt, dict):
        src = str(ckpt)
        ckpt = load_checkpoint(ckpt)
    if "config" not in ckpt or "model" not in ckpt:
        raise UserError(f"{src}: not an npsemiseg checkpoint (needs config and model)")
    cfg = _inference_config(ckpt["config"])
    n_cls = int(ckpt.get("num_classes") or cfg.num_classes())
    model = build_model(cfg.model, n_cls)
    try:
        model.load_state_dict(eval_weights(ckpt))
    except RuntimeError as e:
        raise UserError(f"{src}: weights do not match the config ({str(e).splitlines()[0][:160]})") from None
    model = convert_syncbn_to_bn(model).eval()
    metrics = _json_safe(dict(ckpt.get("metrics", {})))
    metrics.setdefault("step", int(ckpt.get("step", 0)))
    blob = {
        "format": EXPORT_FORMAT,
        "model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "num_classes": n_cls,
        "metrics": metrics,
    }
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        torch.save(blob, tmp / MODEL_FILE)
        (tmp / CONFIG_FILE).write_text(
            "# npsemiseg export: inference config of the run (model.pretrained cleared)\n" + cfg.to_yaml()
        )
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return out
