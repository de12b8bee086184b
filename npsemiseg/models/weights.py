"""Where the ImageNet weights of ``model.pretrained: torchvision`` come from, and how they get there.

    npsemiseg fetch-weights --out ~/.cache/torch/hub/checkpoints          # on a machine with internet
    npsemiseg fetch-weights --out s3://BUCKET/npsemiseg/weights            # once, into the sweep's bucket
    npsemiseg fetch-weights --from s3://BUCKET/npsemiseg/weights --out DIR  # on a node: copy from the bucket

Training never downloads: ``find_weights`` looks in ``$NPSEMISEG_WEIGHTS_DIR`` (when set), then torch's hub cache
(``~/.cache/torch/hub/checkpoints``), for torchvision's file names (``resnet50-0676ba61.pth``, ...). The part of the
name after the dash is the start of the file's SHA-256, which ``fetch_weights`` checks, as torchvision does.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from npsemiseg.errors import UserError, one_line

WEIGHTS_ENV = "NPSEMISEG_WEIGHTS_DIR"
DOWNLOAD_BASE = "https://download.pytorch.org/models/"
FETCH_HINT = "npsemiseg fetch-weights --out DIR (then NPSEMISEG_WEIGHTS_DIR=DIR), see docs/cluster.md"


def weight_files(depth: str) -> list[str]:
    """torchvision's ImageNet weight file names for a ResNet depth, the recipes' one (IMAGENET1K_V1) first."""
    import torchvision.models as tvm

    enums = {"resnet18": tvm.ResNet18_Weights, "resnet34": tvm.ResNet34_Weights,
             "resnet50": tvm.ResNet50_Weights, "resnet101": tvm.ResNet101_Weights}
    if depth not in enums:
        raise UserError(f"model.backbone: no torchvision ImageNet weights for {depth!r}")
    names = [os.path.basename(w.url) for w in enums[depth]]
    first = os.path.basename(enums[depth].IMAGENET1K_V1.url)
    return [first] + [n for n in names if n != first]


def weight_dirs() -> list[Path]:
    """Folders searched for weights, in order: ``$NPSEMISEG_WEIGHTS_DIR``, then torch's hub cache."""
    import torch

    dirs = []
    if os.environ.get(WEIGHTS_ENV):
        dirs.append(Path(os.environ[WEIGHTS_ENV]).expanduser())
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    return dirs


def find_weights(depth: str) -> Path | None:
    """The first torchvision weight file for ``depth`` found in ``weight_dirs()`` (never downloads)."""
    for d in weight_dirs():
        for name in weight_files(depth):
            if (d / name).is_file():
                return d / name
    return None


def require_weights(depth: str) -> Path:
    """``find_weights`` or a UserError that names the folders searched and the command that fills them."""
    path = find_weights(depth)
    if path is None:
        where = ", ".join(str(d) for d in weight_dirs())
        raise UserError(f"model.pretrained=torchvision: {weight_files(depth)[0]} not found in {where}; "
                        f"fetch it with: {FETCH_HINT}")
    return path


def needed_depths(cfgs: list) -> list[str]:
    """Backbones whose torchvision weights the given Configs need (``model.pretrained: torchvision``)."""
    return sorted({c.model.backbone for c in cfgs if c.model.pretrained == "torchvision"})


def sha256_prefix_ok(path: Path, name: str) -> bool:
    """torchvision names files ``<arch>-<first hex digits of the SHA-256>.pth``; check those digits."""
    stem = name.rsplit(".", 1)[0]
    prefix = stem.rsplit("-", 1)[-1] if "-" in stem else ""
    if not prefix:
        return True
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest().startswith(prefix)


def _is_uri(s: str) -> bool:
    return "://" in s and not s.startswith(("http://", "https://", "file://"))


def _get(source: str, name: str, dst: Path) -> None:
    """Copy ``<source>/<name>`` to ``dst``: an http(s)/file URL base, a storage URI (s3://, gs://) or a folder."""
    src = f"{source.rstrip('/')}/{name}"
    try:
        if source.startswith(("http://", "https://", "file://")):
            import torch

            torch.hub.download_url_to_file(src, str(dst), progress=False)
        elif _is_uri(source):
            import pyarrow.fs as pafs

            fs, path = pafs.FileSystem.from_uri(src)
            with fs.open_input_stream(path) as fin, open(dst, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        else:
            shutil.copyfile(Path(source).expanduser() / name, dst)
    except (OSError, ValueError) as e:  # URLError is an OSError
        raise UserError(f"--from: cannot fetch {src} ({one_line(e)})") \
            from None


def _put(local: Path, out: str, name: str) -> str:
    """Store ``local`` as ``<out>/<name>`` (a folder, created, or a storage URI); returns where it went."""
    if _is_uri(out):
        import pyarrow.fs as pafs

        dst = f"{out.rstrip('/')}/{name}"
        try:
            fs, path = pafs.FileSystem.from_uri(dst)
            with open(local, "rb") as fin, fs.open_output_stream(path) as fout:
                shutil.copyfileobj(fin, fout)
        except (OSError, ValueError) as e:
            raise UserError(f"--out: cannot write {dst} ({one_line(e)})") from None
        return dst
    folder = Path(out).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    dst_path = folder / name
    tmp = folder / f".{name}.tmp"
    shutil.copyfile(local, tmp)
    os.replace(tmp, dst_path)
    return str(dst_path)


def fetch_weights(depths: list[str], out: str, source: str = DOWNLOAD_BASE, check_hash: bool = True) -> list[str]:
    """Fetch each depth's IMAGENET1K_V1 file from ``source`` into ``out`` (folder or URI); returns the destinations.

    A file whose SHA-256 does not start with the digits in its name is rejected (UserError), nothing is stored.
    A file already in a local ``out`` that passes the check is kept as it is.
    """
    if not depths:
        raise UserError("--backbone: name at least one backbone (resnet18, resnet34, resnet50, resnet101)")
    done = []
    with tempfile.TemporaryDirectory(prefix="npsemiseg-weights-") as tmp:
        for depth in depths:
            name = weight_files(depth)[0]
            have = Path(out).expanduser() / name
            if not _is_uri(out) and have.is_file() and (not check_hash or sha256_prefix_ok(have, name)):
                done.append(str(have))  # already there (a pre-built image, a second setup run)
                continue
            local = Path(tmp) / name
            _get(source, name, local)
            if check_hash and not sha256_prefix_ok(local, name):
                raise UserError(f"--from: {source.rstrip('/')}/{name}: SHA-256 does not match the file name "
                                "(corrupt or not torchvision's file); nothing stored")
            done.append(_put(local, out, name))
    return done
