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
from npsemiseg.errors import UserError, one_line
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


def _with_weights(cfg: Config, num_classes: int, weights: dict[str, torch.Tensor], src: str) -> nn.Module:
    """``build_model(cfg.model, num_classes)`` holding ``weights`` (UserError naming ``src`` when they do not fit)."""
    from npsemiseg.models import build_model

    model = build_model(cfg.model, num_classes)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise UserError(f"{src}: weights do not match the config ({one_line(e)[:160]})") from None
    return model


def model_from_checkpoint(ckpt: dict[str, Any], src: str, overrides: list[str] | None = None
                          ) -> tuple[nn.Module, Config, int]:
    """(model with the eval weights, inference config, number of classes) from a full checkpoint dict."""
    missing = [k for k in ("model", "config") if k not in ckpt]
    if missing:
        raise UserError(f"{src}: not an npsemiseg checkpoint (missing {', '.join(missing)})")
    cfg = _inference_config(ckpt["config"], overrides)
    n_cls = int(ckpt.get("num_classes") or cfg.num_classes())
    return _with_weights(cfg, n_cls, eval_weights(ckpt), src), cfg, n_cls


def load_for_inference(path: str | os.PathLike, overrides: list[str] | None = None,
                       device: str | torch.device = "cpu") -> tuple[nn.Module, Config, dict[str, Any]]:
    """(model in eval mode, config, metrics) from a full checkpoint file, an export dir or its model.pt.

    Every problem a user can cause (missing path, corrupt file, weights that do not fit the config) is a
    UserError naming the path.
    """
    p = Path(path)
    if p.is_dir():
        mfile, cfile = p / MODEL_FILE, p / CONFIG_FILE
        if not mfile.is_file() or not cfile.is_file():
            raise UserError(f"{p}: not an export dir (needs {MODEL_FILE} and {CONFIG_FILE})")
        cfg = load_config(cfile, overrides)
        blob = load_checkpoint(mfile)
        if blob.get("format") != EXPORT_FORMAT:
            raise UserError(f"{mfile}: not an npsemiseg export (format {blob.get('format')!r})")
        model = _with_weights(cfg, int(blob["num_classes"]), blob["model"], str(p))
    elif p.is_file():
        blob = load_checkpoint(p)
        if blob.get("format") == EXPORT_FORMAT:
            return load_for_inference(p.parent, overrides, device)
        model, cfg, _ = model_from_checkpoint(blob, str(p), overrides)
    else:
        raise UserError(f"{p}: checkpoint or export dir not found")
    return model.to(device).eval(), cfg, dict(blob.get("metrics", {}))


def export_model(ckpt: str | os.PathLike | dict[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write an inference-only export dir from a checkpoint path or dict; returns ``out_dir``.

    The dir is assembled in a temp folder beside ``out_dir`` and renamed into place, replacing an older export.
    """
    from npsemiseg.models import convert_syncbn_to_bn

    src = "checkpoint"
    if not isinstance(ckpt, dict):
        src = str(ckpt)
        ckpt = load_checkpoint(ckpt)
    model, cfg, n_cls = model_from_checkpoint(ckpt, src)
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
