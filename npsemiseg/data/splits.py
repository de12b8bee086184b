"""Named label-split protocols: deterministic generation, loading of published split files, validation.

Protocols (labelled counts; fractions are ``ceil(annotated pool * fraction)``)::

    voc/classic/{92,183,366,732,1464}       labelled drawn from the 1464 fine images; the rest unlabelled
    voc/blended_cps/{1_16,1_8,1_4,1_2}      random from the 10582 pool -> 662 / 1323 / 2646 / 5291 (CPS, UniMatch)
    voc/blended_u2pl/{1_16,1_8,1_4,1_2}     same counts, the 1464 fine images taken first (U2PL)
    cityscapes/{1_16,1_8,1_4,1_2}           random from the 2975 train images -> 186 / 372 / 744 / 1488
    demo/{1_16,1_8,1_4,1_2}                 random from the synthetic tree's annotated pool (any dataset)

Unlabelled = the rest of the train pool, including images that have no mask. A split's identity is the sha256
of its sorted id lists (``SplitInfo.checksum``), so a result says exactly which split it used.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from npsemiseg.data.io import write_text
from npsemiseg.data.tree import DataTree, Sample
from npsemiseg.errors import UserError
from npsemiseg.fileio import atomic_dir

FRACTIONS = {"1_16": 1 / 16, "1_8": 1 / 8, "1_4": 1 / 4, "1_2": 1 / 2}
LABELLED_FILE, UNLABELLED_FILE = "labeled.txt", "unlabeled.txt"


@dataclass(frozen=True)
class Protocol:
    """How a split is drawn: ``kind`` is classic (count from fine), cps (random), u2pl (fine first)."""

    name: str
    dataset: str  # voc | cityscapes | any
    kind: str
    count: int = 0  # classic: absolute labelled count
    fraction: float = 0.0  # cps / u2pl: fraction of the annotated pool

    def n_labelled(self, pool_size: int) -> int:
        """Expected labelled count for an annotated pool of this size."""
        return self.count if self.kind == "classic" else math.ceil(pool_size * self.fraction)


def _registry() -> dict[str, Protocol]:
    reg: dict[str, Protocol] = {}
    for n in (92, 183, 366, 732, 1464):
        reg[f"voc/classic/{n}"] = Protocol(f"voc/classic/{n}", "voc", "classic", count=n)
    for tag, frac in FRACTIONS.items():
        for name, ds, kind in (
            (f"voc/blended_cps/{tag}", "voc", "cps"),
            (f"voc/blended_u2pl/{tag}", "voc", "u2pl"),
            (f"cityscapes/{tag}", "cityscapes", "cps"),
            (f"demo/{tag}", "any", "cps"),
        ):
            reg[name] = Protocol(name, ds, kind, fraction=frac)
    return reg


PROTOCOLS = _registry()


def get_protocol(name: str, dataset: str | None = None) -> Protocol:
    """Look up a protocol; UserError (naming data.split) for unknown names or the wrong dataset."""
    proto = PROTOCOLS.get(name)
    if proto is None:
        raise UserError(f"data.split: unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    if dataset is not None and proto.dataset not in ("any", dataset):
        raise UserError(f"data.split: protocol {name} is for dataset {proto.dataset}, not {dataset}")
    return proto


@dataclass(frozen=True)
class SplitInfo:
    """Which split a run used: name, sizes, sha256 of the sorted id lists, and where it came from."""

    name: str
    n_labelled: int
    n_unlabelled: int
    checksum: str
    source: str = "generated"  # "generated" or the split folder
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Split:
    labelled: list[Sample]
    unlabelled: list[Sample]
    info: SplitInfo


def split_checksum(labelled_ids: list[str], unlabelled_ids: list[str]) -> str:
    """sha256 of the sorted labelled ids and the sorted unlabelled ids (order-free, separator-safe)."""
    text = "labelled\n" + "\n".join(sorted(labelled_ids)) + "\nunlabelled\n" + "\n".join(sorted(unlabelled_ids))
    return hashlib.sha256(text.encode()).hexdigest()


def _make(name: str, labelled: list[Sample], unlabelled: list[Sample], source: str, seed: int) -> Split:
    info = SplitInfo(name, len(labelled), len(unlabelled),
                     split_checksum([s.id for s in labelled], [s.id for s in unlabelled]), source, seed)
    return Split(labelled, unlabelled, info)


def generate_split(tree: DataTree, proto: Protocol, seed: int = 0) -> Split:
    """Draw the labelled set from the tree's pools with ``seed``; the same pools and seed give the same split."""
    annotated = tree.annotated_pool()
    n = proto.n_labelled(len(annotated))
    rng = np.random.default_rng(seed)
    if proto.kind == "classic":
        fine = tree.fine_ids()
        if len(fine) < n:
            raise UserError(f"data.split: {proto.name} needs {n} fine images, {tree.base} has {len(fine)}")
        ids = [fine[i] for i in rng.permutation(len(fine))[:n]]
    elif proto.kind == "u2pl":
        fine = tree.fine_ids()
        fine_set = set(fine)
        rest = [s.id for s in annotated if s.id not in fine_set]
        order = [fine[i] for i in rng.permutation(len(fine))] + [rest[i] for i in rng.permutation(len(rest))]
        ids = order[:n]
    else:
        ids = [annotated[i].id for i in rng.permutation(len(annotated))[:n]]
    if len(ids) < n or n < 1:
        raise UserError(f"data.split: {proto.name} needs {max(n, 1)} annotated images, {tree.base} has {len(ids)}")
    chosen = set(ids)
    labelled = [s for s in annotated if s.id in chosen]
    if len(labelled) != n:  # a fine id without a mask cannot happen with our readers; guard custom trees
        raise UserError(f"data.split: {proto.name}: {n - len(labelled)} chosen images have no mask in {tree.base}")
    unlabelled = [s for s in tree.train_pool() if s.id not in chosen]
    return _make(proto.name, labelled, unlabelled, "generated", seed)


def _read_split_file(tree: DataTree, path: Path) -> list[tuple[int, Sample]]:
    if not path.is_file():
        raise UserError(f"{path}: split file not found (data.split_dir)")
    out: list[tuple[int, Sample]] = []
    seen: dict[str, int] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        token = line.split()[0]
        sid = tree.id_from_token(token)
        if sid in seen:
            raise UserError(f"{path}:{n}: {sid} listed twice (first on line {seen[sid]})")
        seen[sid] = n
        if tree.is_val(sid):
            raise UserError(f"{path}:{n}: {sid} is a val image (val must be disjoint from train)")
        sample = tree.lookup(sid)
        if sample is None:
            raise UserError(f"{path}:{n}: image not found in the train pool of {tree.base}: {token}")
        if not sample.image.is_file():
            raise UserError(f"{path}:{n}: image not found: {sample.image}")
        out.append((n, sample))
    return out


def load_split(tree: DataTree, proto: Protocol, split_dir: str | Path) -> Split:
    """Read ``labeled.txt`` / ``unlabeled.txt`` (lines "JPEGImages/x.jpg SegmentationClass/x.png" or bare ids)
    and validate them: files exist, labelled images have masks, lists disjoint, not val, labelled count matches."""
    d = Path(split_dir)
    if not d.is_dir():
        raise UserError(f"{d}: split folder not found (data.split_dir)")
    lab_file, unl_file = d / LABELLED_FILE, d / UNLABELLED_FILE
    lab = _read_split_file(tree, lab_file)
    unl = _read_split_file(tree, unl_file)
    for n, s in lab:
        if s.mask is None:
            raise UserError(f"{lab_file}:{n}: labelled image {s.id} has no mask")
    lab_lines = {s.id: n for n, s in lab}
    for n, s in unl:
        if s.id in lab_lines:
            raise UserError(
                f"{unl_file}:{n}: {s.id} is also labelled ({lab_file.name}:{lab_lines[s.id]}); "
                "labelled and unlabelled must be disjoint"
            )
    expected = proto.n_labelled(len(tree.annotated_pool()))
    if len(lab) != expected:
        raise UserError(f"{lab_file}: {len(lab)} labelled images, protocol {proto.name} expects {expected}")
    if not lab:
        raise UserError(f"{lab_file}: no labelled images")
    return _make(proto.name, [s for _, s in lab], [s for _, s in unl], str(d), 0)


def _line(tree: DataTree, s: Sample) -> str:
    return tree.rel(s.image) + (f" {tree.rel(s.mask)}" if s.mask is not None else "")


def write_split(tree: DataTree, split: Split, out_dir: str | Path) -> Path:
    """Write labeled.txt, unlabeled.txt and split.json (info + checksum) into ``out_dir``.

    The files are written into a fresh temp folder that is renamed to ``out_dir`` only when complete; an existing
    ``out_dir`` must be empty or hold only earlier split files (which are replaced one by one, atomically).
    """
    out = Path(out_dir)
    lab = "".join(_line(tree, s) + "\n" for s in split.labelled)
    unl = "".join(_line(tree, s) + "\n" for s in split.unlabelled)
    meta = json.dumps(split.info.to_dict(), indent=2) + "\n"
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder (--out)")
    if out.is_dir():
        others = {p.name for p in out.iterdir()} - {LABELLED_FILE, UNLABELLED_FILE, "split.json"}
        if others:
            raise UserError(f"{out}: folder not empty (holds {sorted(others)[0]}); choose another --out")
        write_text(out / LABELLED_FILE, lab)
        write_text(out / UNLABELLED_FILE, unl)
        write_text(out / "split.json", meta)
        return out
    with atomic_dir(out) as tmp:
        (tmp / LABELLED_FILE).write_text(lab)
        (tmp / UNLABELLED_FILE).write_text(unl)
        (tmp / "split.json").write_text(meta)
    return out


def resolve_split(tree: DataTree, name: str, seed: int = 0, split_dir: str = "") -> Split:
    """The split a run trains on: loaded from ``split_dir`` when given, else generated from ``seed``."""
    proto = get_protocol(name, tree.name)
    if split_dir:
        return load_split(tree, proto, split_dir)
    return generate_split(tree, proto, seed)
