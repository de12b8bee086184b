"""Synthetic VOC- and Cityscapes-format datasets for tests and the CPU demo (``npsemiseg make-demo-data``).

VOC tree: 6 object classes (VOC ids 1, 5, 8, 12, 15, 19; the other 14 never appear) drawn as distinct shapes,
each with its own texture and colour, on a smooth background. A nuisance factor t in [0, 1] rotates hues (up to
90 degrees), darkens the image, adds a colour cast and noise. Annotated train images (the pool that labelled
splits are drawn from) only span t <= 0.55, while the mask-less extra images and val span the full range: a
small labelled set is learnable but does not cover the appearance the unlabelled pool shows, so
semi-supervised training has something to gain. Each image's t is recorded in ``summary.json``.

Cityscapes tree: street scenes (sky, buildings, vegetation, road, sidewalk, poles, signs, cars with licence
plates, persons, an ego-vehicle strip, void patches) written as labelIds PNGs (license plate = -1 stored as 255),
then converted to labelTrainIds by our own converter.

Everything is deterministic in (scale, seed) and written into a temp folder renamed onto ``out`` at the end.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from npsemiseg.data.cityscapes import LABELID_TO_TRAINID, convert_trainids
from npsemiseg.data.io import voc_palette
from npsemiseg.data.labels import IGNORE
from npsemiseg.data.voc import VOC_CLASSES
from npsemiseg.errors import UserError
from npsemiseg.fileio import atomic_dir


@dataclass(frozen=True)
class Scale:
    voc_hw: tuple[int, int]
    n_fine: int  # fine train images (SegmentationClass + ImageSets train.txt)
    n_aug: int  # train images with SBD-style masks only (SegmentationClassAug)
    n_extra: int  # train images without any mask (train_unlabelled.txt)
    n_val: int
    city_hw: tuple[int, int]
    n_city_train: int
    n_city_val: int


SCALES = {
    "tiny": Scale((64, 72), 10, 10, 8, 8, (64, 128), 12, 4),
    "demo": Scale((112, 128), 120, 120, 160, 100, (96, 192), 160, 40),
    "full": Scale((160, 192), 600, 900, 1000, 300, (128, 256), 600, 100),
}
ANNOTATED_T_MAX = 0.55  # nuisance range covered by annotated train images (extras and val: 0..1)
HUE_SHIFT = 90.0  # degrees of hue rotation at nuisance t = 1

# shape -> (VOC class id, base colour, texture)
OBJECTS = (
    ("disc", 1, (0.85, 0.25, 0.20), "hstripes"),
    ("square", 5, (0.20, 0.45, 0.85), "vstripes"),
    ("triangle", 8, (0.95, 0.75, 0.15), "checker"),
    ("cross", 12, (0.55, 0.20, 0.70), "plain"),
    ("ring", 15, (0.15, 0.70, 0.35), "dots"),
    ("diamond", 19, (0.90, 0.45, 0.65), "diagonal"),
)
# Variant "alt": a tree the demo recipe was never tuned on: six other VOC classes, shape/texture/colour pairings
# reshuffled (two new textures), and the nuisance hue rotation turning the other way.
OBJECTS_ALT = (
    ("ring", 2, (0.20, 0.55, 0.90), "checker"),
    ("triangle", 7, (0.80, 0.30, 0.60), "rings"),
    ("disc", 9, (0.30, 0.75, 0.70), "vstripes"),
    ("diamond", 11, (0.95, 0.60, 0.10), "hstripes"),
    ("square", 16, (0.50, 0.80, 0.20), "dots"),
    ("cross", 20, (0.85, 0.15, 0.35), "grid"),
)
VARIANTS = {"base": (OBJECTS, 1.0), "alt": (OBJECTS_ALT, -1.0)}  # name -> (objects, hue rotation sign)
CASTS = np.array([[0.1, 0.2, 0.6], [0.6, 0.35, 0.05], [0.1, 0.5, 0.2], [0.45, 0.1, 0.5]])


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:h, 0:w].astype(np.float32)


def _shape(kind: str, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    ady, adx = np.abs(dy), np.abs(dx)
    if kind == "disc":
        return dy * dy + dx * dx <= r * r
    if kind == "square":
        return np.maximum(ady, adx) <= 0.8 * r
    if kind == "triangle":
        return (dy >= -r) & (dy <= 0.8 * r) & (adx <= (dy + r) * 0.6)
    if kind == "cross":
        return ((adx <= 0.3 * r) & (ady <= r)) | ((ady <= 0.3 * r) & (adx <= r))
    if kind == "ring":
        d2 = dy * dy + dx * dx
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    return adx + ady <= r  # diamond


def _texture(kind: str, yy: np.ndarray, xx: np.ndarray, period: float) -> np.ndarray:
    k = 2 * np.pi / period
    if kind == "hstripes":
        return (np.sin(k * yy) > 0).astype(np.float32)
    if kind == "vstripes":
        return (np.sin(k * xx) > 0).astype(np.float32)
    if kind == "checker":
        return ((np.sin(k * yy) > 0) ^ (np.sin(k * xx) > 0)).astype(np.float32)
    if kind == "dots":
        return (np.sin(k * yy) * np.sin(k * xx) > 0.4).astype(np.float32)
    if kind == "diagonal":
        return (np.sin(k * (yy + xx) * 0.7) > 0).astype(np.float32)
    if kind == "rings":
        return (np.sin(0.8 * k * np.hypot(yy - yy.mean(), xx - xx.mean())) > 0).astype(np.float32)
    if kind == "grid":
        return ((np.abs(np.sin(k * yy)) < 0.3) | (np.abs(np.sin(k * xx)) < 0.3)).astype(np.float32)
    return np.full(yy.shape, 0.6, np.float32)


def _hue_rotation(degrees: float) -> np.ndarray:
    """3x3 RGB rotation about the grey axis (Rodrigues): a hue shift that keeps brightness."""
    a = np.deg2rad(degrees)
    u = np.full(3, 1 / np.sqrt(3))
    cross = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    return np.cos(a) * np.eye(3) + np.sin(a) * cross + (1 - np.cos(a)) * np.outer(u, u)


def _nuisance(img: np.ndarray, t: float, rng: np.random.Generator, hue_sign: float = 1.0) -> np.ndarray:
    """Rotate hue, darken, add a colour cast and noise in proportion to t; returns uint8.

    At t = 1: hue +90 degrees, brightness x0.5, cast 0.12, noise sigma 0.04. The first two lie inside the strong
    view's colour-jitter range, so invariance learnt from unlabelled images can transfer to high-t images.
    """
    cast = CASTS[rng.integers(len(CASTS))]
    out = img @ _hue_rotation(hue_sign * HUE_SHIFT * t).T.astype(np.float32)
    out = out * (1.0 - 0.5 * t) + t * 0.12 * cast
    out = out + rng.normal(0.0, 0.01 + 0.03 * t, img.shape).astype(np.float32)
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def boundary_ring(mask: np.ndarray) -> np.ndarray:
    """Copy of mask with 255 on a one-pixel band wherever the label changes (VOC-style boundaries)."""
    out = mask.copy()
    edge = np.zeros(mask.shape, bool)
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge[:-1, :] |= mask[:-1, :] != mask[1:, :]
    out[edge] = IGNORE
    return out


def render_voc(h: int, w: int, t: float, rng: np.random.Generator,
               variant: str = "base") -> tuple[np.ndarray, np.ndarray]:
    """One synthetic VOC-style image (H x W x 3 uint8) and its class-id mask (no boundaries)."""
    objects, hue_sign = VARIANTS[variant]
    yy, xx = _grid(h, w)
    bg = rng.uniform(0.45, 0.8, 3) * rng.uniform(0.8, 1.0)
    fy, fx, ph = rng.uniform(0.5, 2.0) / h, rng.uniform(0.5, 2.0) / w, rng.uniform(0, 2 * np.pi)
    wave = 0.12 * np.sin(2 * np.pi * (fy * yy + fx * xx) + ph)
    img = np.clip(bg[None, None, :] + wave[..., None], 0, 1).astype(np.float32)
    mask = np.zeros((h, w), np.uint8)
    side = min(h, w)
    for _ in range(rng.integers(1, 4)):
        kind, cls, colour, tex = objects[rng.integers(len(objects))]
        r = rng.uniform(0.14, 0.3) * side
        cy, cx = rng.uniform(0.15 * h, 0.85 * h), rng.uniform(0.15 * w, 0.85 * w)
        inside = _shape(kind, yy - cy, xx - cx, r)
        col = np.clip(np.asarray(colour) + rng.normal(0, 0.06, 3), 0, 1)
        pattern = _texture(tex, yy, xx, period=max(4.0, side / 12))
        shade = (0.55 + 0.45 * pattern)[..., None] * col[None, None, :]
        img = np.where(inside[..., None], shade, img)
        mask[inside] = cls
    return _nuisance(img, t, rng, hue_sign), mask


# Cityscapes labelIds used by the synthetic scenes
SKY, BUILDING, VEGETATION, ROAD, SIDEWALK, POLE, SIGN, CAR, PERSON = 23, 11, 21, 7, 8, 17, 20, 26, 24
UNLABELED, EGO, STATIC, PLATE = 0, 1, 4, 255  # void ids; the licence plate (-1) is stored as 255
CITY_COLOURS = {
    SKY: (0.45, 0.65, 0.95), BUILDING: (0.55, 0.5, 0.45), VEGETATION: (0.25, 0.55, 0.2), ROAD: (0.42, 0.4, 0.45),
    SIDEWALK: (0.8, 0.6, 0.7), POLE: (0.7, 0.7, 0.7), SIGN: (0.95, 0.85, 0.1), PERSON: (0.85, 0.3, 0.3),
    EGO: (0.12, 0.12, 0.14), STATIC: (0.45, 0.3, 0.15), UNLABELED: (0.0, 0.0, 0.0), PLATE: (0.95, 0.95, 0.95),
}


def render_city(h: int, w: int, t: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic street scene (H x W x 3 uint8) and its labelIds mask (uint8, 255 = licence plate)."""
    yy, xx = _grid(h, w)
    ids = np.full((h, w), SKY, np.uint8)
    horizon = int(rng.uniform(0.38, 0.5) * h)
    below = yy >= horizon
    centre, half_top = rng.uniform(0.4, 0.6) * w, rng.uniform(0.06, 0.12) * w
    road_half = half_top + (yy - horizon) / max(1, h - horizon) * 0.45 * w
    ids[below] = SIDEWALK
    ids[below & (np.abs(xx - centre) <= road_half)] = ROAD
    x = 0
    while x < w:  # building skyline
        bw, bh = int(rng.uniform(0.08, 0.2) * w), int(rng.uniform(0.15, 0.35) * h)
        ids[max(0, horizon - bh):horizon, x:x + bw] = BUILDING
        x += bw + int(rng.integers(0, max(2, w // 20)))
    for _ in range(rng.integers(1, 4)):  # trees
        cy, cx, r = horizon - rng.uniform(0.05, 0.15) * h, rng.uniform(0, w), rng.uniform(0.06, 0.12) * h
        ids[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & ~below] = VEGETATION
    for _ in range(rng.integers(1, 3)):  # poles with a sign
        px = int(rng.uniform(0.05, 0.95) * w)
        top = int(horizon - rng.uniform(0.15, 0.3) * h)
        ids[top:int(horizon + 0.15 * h), px:px + max(1, w // 80)] = POLE
        ids[top:top + max(2, h // 16), px - max(1, w // 60):px + max(2, w // 60)] = SIGN
    for _ in range(rng.integers(1, 4)):  # cars on the road, licence plate at the back
        cy = int(rng.uniform(horizon + 0.1 * (h - horizon), h * 0.85))
        size = 0.25 + 0.75 * (cy - horizon) / max(1, h - horizon)
        cw, ch = int(0.2 * w * size) + 4, int(0.14 * h * size) + 3
        cx = int(centre + rng.uniform(-0.5, 0.5) * road_half[min(cy, h - 1), 0] - cw / 2)
        ids[max(0, cy - ch):cy, max(0, cx):max(0, cx + cw)] = CAR
        pw = max(2, cw // 5)
        ids[max(0, cy - 3):max(0, cy - 1), max(0, cx + cw // 2 - pw // 2):max(0, cx + cw // 2 + pw // 2)] = PLATE
    for _ in range(rng.integers(0, 3)):  # persons on the sidewalk
        cx, cy = rng.uniform(0.02, 0.98) * w, rng.uniform(horizon + 0.05 * h, h * 0.8)
        ph = 0.12 * h * (0.4 + (cy - horizon) / max(1, h - horizon))
        ids[((yy - cy) / ph) ** 2 + ((xx - cx) / (0.3 * ph)) ** 2 <= 1] = PERSON
    if rng.random() < 0.5:  # void: static object and an unlabelled patch
        sy, sx = int(rng.uniform(horizon, 0.8 * h)), int(rng.uniform(0, 0.9 * w))
        ids[sy:sy + h // 10, sx:sx + w // 16] = STATIC
    ids[int(0.93 * h):, :] = EGO
    ids[: max(1, h // 32), : max(1, w // 32)] = UNLABELED

    img = np.zeros((h, w, 3), np.float32)
    car_col = rng.uniform(0.1, 0.9, 3)
    for label_id, colour in {**CITY_COLOURS, CAR: tuple(car_col)}.items():
        sel = ids == label_id
        if sel.any():
            img[sel] = colour
    windows = (np.sin(yy * 1.3) > 0.3) & (np.sin(xx * 1.1) > 0.3) & (ids == BUILDING)
    img[windows] *= 0.55
    leaves = rng.normal(0, 0.08, (h, w)) * (ids == VEGETATION)
    img += leaves[..., None]
    return _nuisance(img, t, rng), ids


def _save_png(path: Path, arr: np.ndarray, palette: bool = False) -> None:
    im = Image.fromarray(np.ascontiguousarray(arr))
    if palette:
        im.putpalette(voc_palette())
    im.save(path, format="PNG")


def _write_voc(base: Path, sc: Scale, seed: int, variant: str = "base") -> dict:
    """VOCdevkit/VOC2012 tree: fine train + val (palette, boundaries), aug (grayscale), extras (no masks)."""
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    h, w = sc.voc_hw
    groups = {"fine": (sc.n_fine, ANNOTATED_T_MAX), "aug": (sc.n_aug, ANNOTATED_T_MAX),
              "extra": (sc.n_extra, 1.0), "val": (sc.n_val, 1.0)}
    ids: dict[str, list[str]] = {}
    nuisance: dict[str, float] = {}
    for gi, (group, (n, t_max)) in enumerate(groups.items()):
        ids[group] = []
        for i in range(n):
            sid = f"2026_{gi}{i:05d}"
            rng = np.random.default_rng([seed, 0, gi, i])
            t = float(rng.uniform(0, t_max))
            nuisance[sid] = round(t, 4)
            img, mask = render_voc(h, w, t, rng, variant)
            Image.fromarray(img).save(base / "JPEGImages" / f"{sid}.jpg", quality=92)
            if group in ("fine", "val"):
                _save_png(base / "SegmentationClass" / f"{sid}.png", boundary_ring(mask), palette=True)
            if group in ("fine", "aug"):  # SBD-style: grayscale ids, no boundaries (covers fine ids too)
                _save_png(base / "SegmentationClassAug" / f"{sid}.png", mask)
            ids[group].append(sid)
    sets = base / "ImageSets" / "Segmentation"
    for name, members in (("train", ids["fine"]), ("val", ids["val"]), ("trainval", ids["fine"] + ids["val"]),
                          ("train_aug", ids["fine"] + ids["aug"]), ("train_unlabelled", ids["extra"])):
        (sets / f"{name}.txt").write_text("".join(f"{i}\n" for i in members))
    return {"image_hw": list(sc.voc_hw), "fine_train": sc.n_fine, "aug_train": sc.n_aug,
            "unannotated_train": sc.n_extra, "val": sc.n_val,
            "classes": {str(c): VOC_CLASSES[c] for _, c, _, _ in VARIANTS[variant][0]} | {"0": "background"},
            "annotated_nuisance_max": ANNOTATED_T_MAX, "nuisance": nuisance}


def _write_city(root: Path, sc: Scale, seed: int) -> dict:
    h, w = sc.city_hw
    half = sc.n_city_train // 2
    plan = (("train", "alphaville", half), ("train", "betaburg", sc.n_city_train - half),
            ("val", "gammastadt", sc.n_city_val))
    for ci, (split, city, n) in enumerate(plan):
        img_dir, gt_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            stem = f"{city}_{ci:06d}_{i:06d}"
            rng = np.random.default_rng([seed, 1, ci, i])
            img, ids = render_city(h, w, float(rng.uniform(0, 1)), rng)
            _save_png(img_dir / f"{stem}_leftImg8bit.png", img)
            _save_png(gt_dir / f"{stem}_gtFine_labelIds.png", ids)
    converted = convert_trainids(root)
    used = sorted({SKY, BUILDING, VEGETATION, ROAD, SIDEWALK, POLE, SIGN, CAR, PERSON})
    return {"image_hw": list(sc.city_hw), "train": sc.n_city_train, "val": sc.n_city_val,
            "converted_trainid_files": converted, "train_ids_present": sorted(LABELID_TO_TRAINID[i] for i in used)}


def make_demo_data(out: str | os.PathLike, scale: str = "demo", seed: int = 0, overwrite: bool = False,
                   variant: str = "base") -> None:
    """Write ``out/voc/VOCdevkit/VOC2012``, ``out/cityscapes`` and ``out/summary.json``.

    ``variant="alt"`` draws the VOC tree with other classes, pairings, textures and hue direction
    (``OBJECTS_ALT``): held-out data for recipes tuned on the base tree (use it with another ``seed`` too).

    ``out`` may be missing or an empty folder; a non-empty ``out`` needs ``overwrite=True``. The trees are built
    in a temp folder beside ``out`` and renamed onto it when complete, so an error leaves nothing half-written.
    """
    if scale not in SCALES:
        raise UserError(f"--scale: unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    if variant not in VARIANTS:
        raise UserError(f"--variant: unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    dst = Path(out)
    if dst.exists() and not dst.is_dir():
        raise UserError(f"{dst}: exists and is not a folder (--out)")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise UserError(f"{dst}: folder not empty; choose another --out or pass --force")
    sc = SCALES[scale]
    with atomic_dir(dst) as tmp:
        summary = {"scale": scale, "seed": seed, "variant": variant,
                   "voc": _write_voc(tmp / "voc" / "VOCdevkit" / "VOC2012", sc, seed, variant),
                   "cityscapes": _write_city(tmp / "cityscapes", sc, seed)}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
