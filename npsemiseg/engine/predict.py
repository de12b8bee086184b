"""Prediction on image files: a palette mask, an uncertainty heat-map and the mean probabilities per image.

    npsemiseg predict --checkpoint exports/demo img1.jpg img2.png --out preds/ [--samples 20]

For each image ``<stem>``: ``<stem>_mask.png`` (palette PNG, VOC colours, class ids as indices),
``<stem>_uncertainty.png`` (8-bit palette PNG whose index is round(255 * entropy / ln C) of the mean prediction,
shown with the ``inferno`` colour map) and ``<stem>.npy`` (float32 C x H x W mean probabilities), all at the
image's original size. Files are written atomically.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from npsemiseg.config import Config
from npsemiseg.engine.evaluate import predict_probs
from npsemiseg.errors import UserError
from npsemiseg.fileio import atomic_path
from npsemiseg.metrics import entropy


def _heat_palette() -> list[int]:
    from matplotlib import colormaps

    rgb = (colormaps["inferno"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)
    return rgb.reshape(-1).tolist()


def entropy_map(probs: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) over dim 0 of C x H x W probabilities, normalised by ln C to [0, 1]."""
    c = probs.shape[0]
    h = entropy(probs, dim=0)
    return (h / math.log(c)).clamp(0.0, 1.0) if c > 1 else torch.zeros_like(h)


def _save_png(path: Path, index: np.ndarray, palette: list[int]) -> None:
    im = Image.fromarray(np.ascontiguousarray(index, dtype=np.uint8))
    im.putpalette(palette)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)


def load_image_tensor(path: str | os.PathLike) -> torch.Tensor:
    """1 x 3 x H x W normalised (ImageNet mean/std) float tensor; UserError naming a missing/corrupt file."""
    from npsemiseg.data.io import read_image
    from npsemiseg.data.transforms import normalize, to_image

    arr = read_image(path)
    return normalize(to_image(arr).as_subclass(torch.Tensor))[None]


@torch.no_grad()
def predict_files(model: nn.Module, cfg: Config, images: list[str | os.PathLike], out_dir: str | os.PathLike,
                  num_samples: int | None = None, mode: str | None = None) -> list[Path]:
    """Predict every image and write its three files under ``out_dir``; returns the mask paths.

    Mode defaults to ``original`` (the full image), or ``sliding_window`` when the run evaluated that way;
    ``center_crop`` is never used for prediction since it would not cover the image.
    """
    from npsemiseg.data.io import voc_palette

    paths = [Path(p) for p in images]
    for p in paths:  # fail before writing anything when a path is wrong
        if not p.is_file():
            raise UserError(f"{p}: image not found")
    stems = [p.stem for p in paths]
    dup = {s for s in stems if stems.count(s) > 1}
    if dup:
        raise UserError(f"{sorted(dup)[0]}: several input images share this file name stem")
    t = num_samples or cfg.model.t_eval
    if mode is None:
        mode = "sliding_window" if cfg.train.val_mode == "sliding_window" else "original"
    device = next(model.parameters()).device
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mask_pal, heat_pal = voc_palette(), _heat_palette()
    written = []
    model.eval()
    for p in paths:
        x = load_image_tensor(p).to(device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg.seed)  # the same latent draws for the same image and weights, every time
            probs = predict_probs(model, x, t, mode, cfg.data.crop_size)[0].float().cpu()  # C x H x W
        mask = probs.argmax(0).numpy().astype(np.uint8)
        heat = (entropy_map(probs) * 255).round().to(torch.uint8).numpy()
        _save_png(out / f"{p.stem}_mask.png", mask, mask_pal)
        _save_png(out / f"{p.stem}_uncertainty.png", heat, heat_pal)
        _save_npy(out / f"{p.stem}.npy", probs.numpy().astype(np.float32))
        written.append(out / f"{p.stem}_mask.png")
    return written
