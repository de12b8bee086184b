"""Export the best checkpoint of each split of a finished sweep: ``<experiment>/exports/<split>/``.

    npsemiseg export --experiment ray_results/demo [--split demo/1_8]

Reads ``results.parquet`` (no Ray needed), picks the full-budget trial with the highest val/miou per split and
hands its best retained checkpoint to ``npsemiseg.engine.export.export_model``, which writes ``model.pt``,
``config.yaml`` and ``metrics.json``. A ``sweep.json`` beside them records which trial it came from. Each export
is written to a temporary folder and renamed into place, so a failure leaves no half-written export.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from npsemiseg.errors import UserError, one_line
from npsemiseg.fileio import atomic_dir
from npsemiseg.tune.common import resolve_under, split_slug
from npsemiseg.tune.results import read_results
from npsemiseg.tune.summary import best_per_split

CHECKPOINT_FILES = ("checkpoint.pt", "model.pt", "state.pt")


def checkpoint_file(path: str | Path) -> Path:
    """The checkpoint file inside a Ray Train checkpoint directory (or the file itself)."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise UserError(f"{p}: checkpoint not found (deleted, or retention removed it)")
    for name in CHECKPOINT_FILES:
        if (p / name).is_file():
            return p / name
    pts = sorted(p.glob("*.pt"))
    if len(pts) == 1:
        return pts[0]
    raise UserError(f"{p}: no checkpoint file ({' / '.join(CHECKPOINT_FILES)}) in this checkpoint directory")


def _download(uri: str, dest: Path) -> Path:
    """Copy a remote checkpoint directory (s3://..., gs://...) into ``dest``."""
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        dest.mkdir(parents=True, exist_ok=True)  # cluster: copy_files does not create the local folder
        pafs.copy_files(path, str(dest), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    except (OSError, ValueError) as e:
        raise UserError(f"{uri}: cannot download the checkpoint ({one_line(e)})") from None
    return dest


def export_trial(row: dict[str, Any], params: list[str], out_dir: Path, exp_dir: Path | None = None) -> Path:
    """Export one results row's checkpoint (a path relative to ``exp_dir``, or absolute, or a URI) atomically."""
    from npsemiseg.engine.export import export_model

    if not row.get("checkpoint_path"):
        raise UserError(f"trial {row['trial_id']} ({row['split']}): no retained checkpoint to export")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    src = str(resolve_under(str(row["checkpoint_path"]), exp_dir or out_dir.parent))
    with atomic_dir(out_dir) as tmp:
        if "://" in src:
            ckpt = checkpoint_file(_download(src, tmp / ".checkpoint"))
        else:
            ckpt = checkpoint_file(src)
        export_model(str(ckpt), tmp)
        shutil.rmtree(tmp / ".checkpoint", ignore_errors=True)
        info = {
            "split": row["split"], "trial_id": row["trial_id"], "checkpoint": row["checkpoint_path"],
            "optuna_trial": _plain(row.get("optuna_trial")), "split_checksum": row.get("split_checksum"),
            "best_miou": row["best_miou"], "best_step": int(row["best_step"]), "iterations": int(row["iterations"]),
            "params": {k: _plain(row.get(k)) for k in params},
        }
        (tmp / "sweep.json").write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def export_experiment(path: str | Path, split: str | None = None) -> dict[str, Path]:
    """Export the best full-budget trial of every split (or of ``split``); returns {split: export dir}."""
    exp_dir = Path(path)
    df, meta = read_results(exp_dir)
    params = meta.get("params", [])
    if split is not None and split not in set(df["split"]):
        raise UserError(f"--split: {split!r} is not in {exp_dir / 'results.parquet'} "
                        f"(splits: {', '.join(sorted(df['split'].unique()))})")
    best = best_per_split(df if split is None else df[df["split"] == split])
    out: dict[str, Path] = {}
    for _, row in best.iterrows():
        parts = Path(row["split"]).parts
        dest = exp_dir / "exports" / (row["split"] if ".." not in parts and not Path(row["split"]).is_absolute()
                                      else split_slug(row["split"]))
        try:
            out[row["split"]] = export_trial(row.to_dict(), params, dest, exp_dir)
        except UserError as e:
            print(f"[export] {row['split']}: best trial {row['trial_id']} not exported: {e}", flush=True)
            continue
        print(f"[export] {row['split']}: trial {row['trial_id']} (val/miou {row['best_miou']:.4f}) -> {dest}",
              flush=True)
    scope = df if split is None else df[df["split"] == split]
    for s in sorted(set(scope["split"]) - set(best["split"])):
        print(f"[export] {s}: nothing exported (no trial ran the full budget with a retained checkpoint)",
              flush=True)
    return out
