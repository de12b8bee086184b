"""Engine subcommands: ``train``, ``evaluate``, ``predict``, ``export`` (single process, no Ray).

    npsemiseg train --config configs/demo.yaml [key=value ...] [--use-gpu] [--no-resume]
    npsemiseg evaluate --checkpoint runs/demo/checkpoints/last.pt [--data-root R] [key=value ...]
    npsemiseg predict --checkpoint exports/demo IMAGES... --out preds [--samples T]
    npsemiseg export --checkpoint runs/demo/checkpoints/last.pt --out exports/demo

The layers above add to two of these in ``npsemiseg/cli.py``: ``distributed/cli.py`` gives ``train`` its Ray Train
flags (``--num-workers N --ray --storage-path P --max-failures K``) and ``tune/cli.py`` gives ``export`` its
``--experiment [--split]`` form. This module imports neither.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from typing import TYPE_CHECKING, Any

from npsemiseg.errors import UserError

if TYPE_CHECKING:
    from npsemiseg.config import Config


def load_train_config(args: argparse.Namespace) -> Config:
    """The recipe of ``npsemiseg train`` (``--config`` + overrides), with INFO logging switched on."""
    from npsemiseg.config import load_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    return load_config(args.config, args.overrides)


def _train(args: argparse.Namespace) -> int:
    from npsemiseg.engine.context import LocalContext
    from npsemiseg.engine.loop import fit

    cfg = load_train_config(args)
    device = "cuda" if args.use_gpu else cfg.device
    metrics = fit(cfg, LocalContext(cfg.out_dir, device, resume=not args.no_resume))
    print(format_metrics(metrics, title=f"{cfg.name}: final metrics (checkpoints in {cfg.out_dir}/checkpoints)"))
    return 0


def format_metrics(metrics: dict[str, Any], title: str = "") -> str:
    """A two-column table of the scalar metrics (per-class IoU folded into one line)."""
    rows = [title] if title else []
    per_class = {k: v for k, v in metrics.items() if "/iou/" in k}
    for k, v in metrics.items():
        if k in per_class or not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        rows.append(f"  {k:<22} {v:.4f}" if isinstance(v, float) else f"  {k:<22} {v}")
    if per_class:
        vals = " ".join("-" if isinstance(v, float) and math.isnan(v) else f"{v:.3f}" for v in per_class.values())
        rows.append(f"  {'per-class IoU':<22} {vals}")
    return "\n".join(rows)


def _evaluate(args: argparse.Namespace) -> int:
    from npsemiseg.data import build_datasets
    from npsemiseg.engine.context import RunContext
    from npsemiseg.engine.evaluate import evaluate
    from npsemiseg.engine.export import load_for_inference

    overrides = list(args.overrides)
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    device = "cuda" if args.use_gpu else "cpu"
    model, cfg, _ = load_for_inference(args.checkpoint, overrides, device)
    data = build_datasets(cfg)
    metrics = evaluate(model, data.val, data.num_classes, mode=cfg.train.val_mode, crop_size=cfg.data.crop_size,
                       num_samples=args.samples or cfg.model.t_eval, ctx=RunContext(device),
                       limit=cfg.data.val_limit, batch_size=cfg.data.val_batch_size, seed=cfg.seed)
    n_val = min(cfg.data.val_limit, len(data.val)) if cfg.data.val_limit else len(data.val)
    t = args.samples or cfg.model.t_eval
    print(format_metrics(metrics, title=f"{args.checkpoint}: {cfg.train.val_mode}, T={t}, {n_val} val images"))
    if args.json:
        print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from npsemiseg.engine.export import load_for_inference
    from npsemiseg.engine.predict import predict_files

    if args.samples is not None and args.samples < 1:
        raise UserError(f"--samples: must be >= 1, got {args.samples}")
    model, cfg, _ = load_for_inference(args.checkpoint, device="cuda" if args.use_gpu else "cpu")
    written = predict_files(model, cfg, args.images, args.out, num_samples=args.samples)
    print(f"wrote {len(written)} x (mask PNG, uncertainty PNG, probabilities NPY) to {args.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    if not args.checkpoint or not args.out:
        raise UserError("export: --checkpoint and --out are required")
    from npsemiseg.engine.export import export_model

    out = export_model(args.checkpoint, args.out)
    print(f"wrote {out}/model.pt, config.yaml, metrics.json")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add train / evaluate / predict / export to the ``npsemiseg`` parser."""
    p = subparsers.add_parser("train", help="train a model (plain loop, or Ray Train with --num-workers > 1)")
    p.add_argument("--config", required=True, help="YAML recipe (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.add_argument("--use-gpu", action="store_true", help="train on GPU(s)")
    p.add_argument("--no-resume", action="store_true", help="ignore a checkpoint already in out_dir")
    p.set_defaults(func=_train)

    p = subparsers.add_parser("evaluate", help="evaluate a checkpoint or export dir on its val set")
    p.add_argument("--checkpoint", required=True, help="full checkpoint (.pt) or export dir")
    p.add_argument("--data-root", default="", help="dataset root (overrides data.root)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.val_mode=sliding_window")
    p.add_argument("--samples", type=int, default=None, help="T latent samples (default model.t_eval)")
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--json", action="store_true", help="also print the metrics as one JSON line")
    p.set_defaults(func=_evaluate)

    p = subparsers.add_parser("predict", help="masks, uncertainty maps and probabilities for image files")
    p.add_argument("--checkpoint", required=True, help="full checkpoint (.pt) or export dir")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--samples", type=int, default=None, help="T latent samples (default model.t_eval)")
    p.add_argument("--use-gpu", action="store_true")
    p.set_defaults(func=_predict)

    p = subparsers.add_parser("export", help="inference-only export of a checkpoint (or of a sweep's best trials)")
    p.add_argument("--checkpoint", default=None, help="full checkpoint (.pt)")
    p.add_argument("--out", default=None, help="export dir to write")
    p.set_defaults(func=_export)
