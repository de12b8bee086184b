"""Reading images and index masks with one-line errors, and atomic writes.

Every reader raises ``DataError`` (a ``UserError``) naming the file (missing, corrupt, truncated, wrong mask
mode, bad label value), so the CLI can print one line. Writers go through a temp file in the same folder and
``os.replace``: an interrupted run never leaves a half-written PNG/JPEG/text file behind.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from npsemiseg.data.labels import IGNORE
from npsemiseg.errors import UserError, one_line
from npsemiseg.fileio import atomic_path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataError(UserError):
    """A bad data file. Keeps its one-line message when a DataLoader worker re-raises it in the main process.

    torch re-creates worker exceptions as ``type(msg)`` with msg = "Caught X in DataLoader worker ...\nOriginal
    Traceback ... <module>.X: <our message>"; we recover our message from that last line so the CLI's single
    line still names the file.
    """

    def __init__(self, message: str) -> None:
        if message.startswith("Caught ") and "\nOriginal Traceback" in message:
            message = one_line(message)
        super().__init__(message)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image fully (so truncation is caught here) as H x W x 3 uint8 RGB."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            im.load()
            arr = np.array(im.convert("RGB"))  # writable copy (torch.from_numpy needs one)
    except FileNotFoundError:
        raise DataError(f"{p}: image not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{p}: cannot read image ({one_line(e)})") from None
    return arr


def read_mask(path: str | os.PathLike, num_classes: int | None = None) -> np.ndarray:
    """Read an index mask (palette 'P' or grayscale 'L' PNG) as H x W uint8 class ids.

    With ``num_classes`` every value must lie in {0..num_classes-1, 255}; anything else (254 included, which is
    reserved for crop padding) is a ``UserError`` naming the file and the value.
    """
    p = Path(path)
    try:
        with Image.open(p) as im:
            im.load()
            mode = im.mode
            arr = np.array(im)
    except FileNotFoundError:
        raise DataError(f"{p}: mask not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{p}: cannot read mask ({one_line(e)})") from None
    if mode not in ("P", "L", "I", "I;16", "1"):
        raise DataError(f"{p}: mask has mode {mode}; expected a palette or grayscale index PNG (class ids)")
    if arr.ndim != 2:
        raise DataError(f"{p}: mask must be single-channel, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(f"{p}: label value {int(arr.max())} outside 0..255")
        arr = arr.astype(np.uint8)
    if num_classes is not None:
        check_labels(arr, num_classes, p)
    return arr


def check_labels(mask: np.ndarray, num_classes: int, where: str | os.PathLike) -> None:
    """Raise UserError if the mask holds a value outside {0..num_classes-1, 255}."""
    bad = (mask >= num_classes) & (mask != IGNORE)
    if bad.any():
        value = int(mask[bad].flat[0])
        raise DataError(f"{where}: label value {value} outside 0..{num_classes - 1} and {IGNORE} (ignore)")


def image_size(path: str | os.PathLike, kind: str = "image") -> tuple[int, int]:
    """(height, width) from the file header only (cheap; used to validate image/mask pairs up front)."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            w, h = im.size
    except FileNotFoundError:
        raise DataError(f"{p}: {kind} not found") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{p}: cannot read {kind} ({one_line(e)})") from None
    return h, w


def check_pair(image: np.ndarray, mask: np.ndarray, mask_path: str | os.PathLike) -> None:
    """Raise UserError when a mask's size differs from its image's."""
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(
            f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} != image size {image.shape[1]}x{image.shape[0]}"
        )


@lru_cache(maxsize=1)
def _palette() -> tuple[int, ...]:
    """The standard PASCAL VOC colour map, built from the bits of the class index."""
    pal: list[int] = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return tuple(pal)


def voc_palette() -> list[int]:
    """The standard PASCAL VOC colour map as a flat list of 768 ints."""
    return list(_palette())


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write a text file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_mask(path: str | os.PathLike, mask: np.ndarray, palette: bool = True) -> None:
    """Atomically write an index mask PNG: palette mode (VOC style) or plain grayscale ('L')."""
    im = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))  # 2-D uint8 -> mode "L"
    if palette:
        im.putpalette(voc_palette())  # "L" -> "P", indices unchanged
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


def save_image(path: str | os.PathLike, image: np.ndarray, quality: int = 92) -> None:
    """Atomically write an RGB image; JPEG for .jpg/.jpeg, PNG otherwise."""
    im = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))  # H x W x 3 uint8 -> "RGB"
    fmt = "JPEG" if Path(path).suffix.lower() in (".jpg", ".jpeg") else "PNG"
    with atomic_path(path) as tmp:
        im.save(tmp, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
