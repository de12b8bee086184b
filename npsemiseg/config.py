"""Typed run configuration: dataclasses <-> YAML, dotted-key overrides, validation once at load.

    cfg = load_config("configs/demo.yaml", ["train.conf_threshold=0.9", "model.latent_dim=16"])

Every error names the dotted key (``train.conf_threshold: must be in [0, 1], got 1.5``).
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from npsemiseg.data.labels import NUM_CLASSES
from npsemiseg.errors import ConfigError, one_line

DATASETS = ("voc", "cityscapes", "list")
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
HEADS = ("np", "plain", "mcdropout")
NP_MODES = ("intended", "released")
NP_DECODERS = ("auto", "spec", "splitnorm", "film", "film_last")  # npsemiseg.models.np_decoders
MC_SCOPES = ("head", "full")
TEST_LATENTS = ("posterior", "prior")
VAL_MODES = ("original", "center_crop", "sliding_window")
# Keys earlier versions wrote into checkpoints and exports; skipped when read back so those still load.
RETIRED_KEYS = {"train.fail_at_step": "fault injection is the NPSEMISEG_FAIL_AT_STEP environment variable"}
THRESHOLD_MODES = ("fixed", "class_adaptive")


@dataclass
class DataConfig:
    """Where the images are and how batches are made."""

    dataset: str = "voc"  # voc | cityscapes | list
    root: str = "demo_data/voc"  # VOC: folder holding VOCdevkit/; Cityscapes: folder holding leftImg8bit/, gtFine/
    split: str = "demo/1_8"  # protocol name (voc/classic/92, cityscapes/1_16, demo/1_8, ...)
    split_seed: int = 0  # seed of the deterministic split generation
    split_dir: str = ""  # folder with published split files (labeled.txt, unlabeled.txt) to use instead
    labelled_list: str = ""  # dataset=list: "image [mask]" per line
    unlabelled_list: str = ""  # dataset=list: "image" per line
    val_list: str = ""  # dataset=list: "image mask" per line
    num_classes: int = 0  # 0 = from the dataset (data/labels.py: voc 21, cityscapes 19); required for dataset=list
    crop_size: int = 321
    scale_min: float = 0.5
    scale_max: float = 2.0
    batch_size_l: int = 2  # labelled images per worker per step
    batch_size_u: int = 2  # unlabelled images per worker per step
    val_batch_size: int = 1
    val_limit: int = 0  # evaluate on the first N val images only (0 = all)
    num_workers: int = 2  # DataLoader processes


@dataclass
class ModelConfig:
    """Backbone, decoder and head (docs/method.md §2-§3)."""

    backbone: str = "resnet50"
    width: int = 64  # base width of the ResNet (64 = torchvision; 16 for a narrow test/demo net)
    output_stride: int = 16  # 8 (ASPP 12/24/36) or 16 (ASPP 6/12/18)
    deep_stem: bool = False
    pretrained: str = ""  # "" = random init; a local .pth path; or "torchvision" (cache only, never downloads)
    aspp_channels: int = 256
    head: str = "np"  # np | plain | mcdropout
    latent_dim: int = 32  # L
    bank_capacity: int = 2560  # K rows per class per bank: the "context size"
    pixels_per_class: int = 0  # rows drawn at random per class per step, over all ranks (0 = K; released: 0 = all)
    t_train: int = 5
    t_eval: int = 20
    kl_weight: float = 0.005
    np_mode: str = "intended"  # intended | released (scrambled gather, zero eval centres, variance-KL)
    test_latent: str = "posterior"  # posterior | prior
    # NP decoder: auto (spec when np_mode=released, else the measured default) | spec | splitnorm | film | film_last
    decoder: str = "auto"
    dropout: float = 0.1  # mcdropout head only (Dropout2d after each fusion block)
    # mcdropout at eval: head = encoder once and T passes after the first dropout; full = T whole-network passes
    mc_dropout_scope: str = "head"


@dataclass
class TrainConfig:
    """The one training loop (docs/method.md §4)."""

    iters: int = 1000  # optimiser steps in total
    semi: bool = True  # False = supervised-only baseline (same loop, unlabelled term off)
    lr: float = 0.001
    head_lr_mult: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    conf_threshold: float = 0.95
    conf_threshold_start: float = -1.0  # >= 0: threshold ramps linearly from this to conf_threshold (-1 = off)
    threshold_ramp: int = 0  # steps of that threshold ramp (0 = constant conf_threshold, the paper)
    threshold_mode: str = "fixed"  # fixed (the paper) | class_adaptive (conf_threshold x class conf / max)
    unsup_weight: float = 1.0
    unsup_ramp: int = 0  # steps of sigmoid ramp-up exp(-5(1-s/R)^2) of unsup_weight (0 = constant, the paper)
    unsup_feature_dropout: float = 0.0  # Dropout2d rate on the encoder features of the strong views (0 = off)
    strong_views: int = 1  # strong views per unlabelled image: 1 (the paper) or 2 (UniMatch's dual strong views)
    entropy_threshold: float = 0.0  # > 0: also drop pseudo-labels with entropy above it
    target_bank_filter: bool = False  # write only confident pseudo-labels into the target bank
    ema_decay: float = 0.99
    grad_clip: float = 5.0
    amp: bool = True  # only takes effect on CUDA
    ohem: bool = False
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100000
    sync_bn: bool = False  # CUDA + several workers only
    eval_every: int = 100  # steps between evaluations (and reports)
    ckpt_every: int = 0  # steps between checkpoints (0 = at every evaluation)
    log_every: int = 10
    val_mode: str = "original"  # original | center_crop | sliding_window
    eval_model: str = "teacher"  # teacher | student
    eval_both: bool = False  # also evaluate the other model: val/teacher_miou and val/student_miou
    pl_gt_metrics: bool = False  # read unlabelled images' masks (when they exist) for train/pl_accuracy


@dataclass
class Config:
    """A whole run."""

    name: str = "run"
    seed: int = 0
    out_dir: str = "runs/run"
    device: str = "auto"  # auto | cpu | cuda
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON/checkpoint friendly)."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def num_classes(self) -> int:
        """Classes of the configured dataset."""
        if self.data.num_classes:
            return self.data.num_classes
        return NUM_CLASSES.get(self.data.dataset, 0)


def _coerce(key: str, value: Any, typ: Any) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if not f.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(f)
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if not math.isfinite(f):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return f
    if typ is str:
        if value is None:
            return ""
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type")  # pragma: no cover


def _merge(obj: Any, data: dict[str, Any], prefix: str) -> None:
    hints = get_type_hints(type(obj))
    names = {f.name for f in fields(obj)}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if key in RETIRED_KEYS:
            continue
        if k not in names:
            raise ConfigError(f"{key}: unknown config key")
        cur = getattr(obj, k)
        if is_dataclass(cur):
            if not isinstance(v, dict):
                raise ConfigError(f"{key}: expected a mapping, got {v!r}")
            _merge(cur, v, key + ".")
        else:
            setattr(obj, k, _coerce(key, v, hints[k]))


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def validate(cfg: Config) -> Config:
    """Check every value once; raise ConfigError naming the key."""
    d, m, t = cfg.data, cfg.model, cfg.train
    _check(d.dataset in DATASETS, "data.dataset", f"must be one of {DATASETS}, got {d.dataset!r}")
    _check(cfg.device in ("auto", "cpu", "cuda"), "device", f"must be auto, cpu or cuda, got {cfg.device!r}")
    _check(d.crop_size >= 16, "data.crop_size", f"must be >= 16, got {d.crop_size}")
    _check(0 < d.scale_min <= d.scale_max, "data.scale_min", "must satisfy 0 < scale_min <= scale_max")
    for k in ("batch_size_l", "batch_size_u", "val_batch_size"):
        _check(getattr(d, k) >= 1, f"data.{k}", f"must be >= 1, got {getattr(d, k)}")
    _check(d.num_workers >= 0, "data.num_workers", "must be >= 0")
    _check(d.val_limit >= 0, "data.val_limit", "must be >= 0")
    _check(d.num_classes >= 0, "data.num_classes", "must be >= 0")
    if d.dataset == "list":
        _check(d.num_classes > 0, "data.num_classes", "must be set (> 0) for dataset=list")
        _check(bool(d.labelled_list), "data.labelled_list", "must be set for dataset=list")
        _check(bool(d.val_list), "data.val_list", "must be set for dataset=list")
    _check(m.backbone in BACKBONES, "model.backbone", f"must be one of {BACKBONES}, got {m.backbone!r}")
    _check(m.width >= 4, "model.width", f"must be >= 4, got {m.width}")
    _check(m.output_stride in (8, 16), "model.output_stride", f"must be 8 or 16, got {m.output_stride}")
    _check(m.head in HEADS, "model.head", f"must be one of {HEADS}, got {m.head!r}")
    _check(m.latent_dim >= 1, "model.latent_dim", f"must be >= 1, got {m.latent_dim}")
    _check(m.bank_capacity >= 1, "model.bank_capacity", f"must be >= 1, got {m.bank_capacity}")
    _check(m.pixels_per_class >= 0, "model.pixels_per_class", "must be >= 0")
    _check(m.t_train >= 1, "model.t_train", f"must be >= 1, got {m.t_train}")
    _check(m.t_eval >= 1, "model.t_eval", f"must be >= 1, got {m.t_eval}")
    _check(m.kl_weight >= 0, "model.kl_weight", "must be >= 0")
    _check(m.np_mode in NP_MODES, "model.np_mode", f"must be one of {NP_MODES}, got {m.np_mode!r}")
    _check(m.test_latent in TEST_LATENTS, "model.test_latent", f"must be one of {TEST_LATENTS}")
    _check(m.decoder in NP_DECODERS, "model.decoder", f"must be one of {NP_DECODERS}, got {m.decoder!r}")
    _check(m.mc_dropout_scope in MC_SCOPES, "model.mc_dropout_scope",
           f"must be one of {MC_SCOPES}, got {m.mc_dropout_scope!r}")
    _check(0 <= m.dropout < 1, "model.dropout", f"must be in [0, 1), got {m.dropout}")
    if m.pretrained and m.pretrained != "torchvision":
        _check(os.path.isfile(m.pretrained), "model.pretrained", f"file not found: {m.pretrained}")
    _check(t.iters >= 1, "train.iters", f"must be >= 1, got {t.iters}")
    _check(t.lr > 0, "train.lr", f"must be > 0, got {t.lr}")
    _check(t.head_lr_mult > 0, "train.head_lr_mult", "must be > 0")
    _check(0 <= t.momentum < 1, "train.momentum", "must be in [0, 1)")
    _check(t.weight_decay >= 0, "train.weight_decay", "must be >= 0")
    _check(0 <= t.conf_threshold <= 1, "train.conf_threshold", f"must be in [0, 1], got {t.conf_threshold}")
    _check(t.conf_threshold_start == -1 or 0 <= t.conf_threshold_start <= 1, "train.conf_threshold_start",
           f"must be -1 (off) or in [0, 1], got {t.conf_threshold_start}")
    _check(t.threshold_mode in THRESHOLD_MODES, "train.threshold_mode",
           f"must be one of {THRESHOLD_MODES}, got {t.threshold_mode!r}")
    _check(t.threshold_ramp >= 0, "train.threshold_ramp", f"must be >= 0, got {t.threshold_ramp}")
    _check(t.unsup_weight >= 0, "train.unsup_weight", "must be >= 0")
    _check(t.unsup_ramp >= 0, "train.unsup_ramp", f"must be >= 0, got {t.unsup_ramp}")
    _check(0 <= t.unsup_feature_dropout < 1, "train.unsup_feature_dropout",
           f"must be in [0, 1), got {t.unsup_feature_dropout}")
    _check(t.strong_views in (1, 2), "train.strong_views", f"must be 1 or 2, got {t.strong_views}")
    _check(t.entropy_threshold >= 0, "train.entropy_threshold", "must be >= 0")
    _check(0 <= t.ema_decay < 1, "train.ema_decay", f"must be in [0, 1), got {t.ema_decay}")
    _check(t.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 = off)")
    _check(0 < t.ohem_thresh <= 1, "train.ohem_thresh", "must be in (0, 1]")
    _check(t.eval_every >= 1, "train.eval_every", "must be >= 1")
    _check(t.ckpt_every >= 0, "train.ckpt_every", "must be >= 0")
    _check(t.log_every >= 1, "train.log_every", "must be >= 1")
    _check(t.val_mode in VAL_MODES, "train.val_mode", f"must be one of {VAL_MODES}, got {t.val_mode!r}")
    _check(t.eval_model in ("teacher", "student"), "train.eval_model", "must be teacher or student")
    return cfg


def parse_override(item: str) -> tuple[str, Any]:
    """``a.b=value`` -> ("a.b", parsed YAML scalar)."""
    if "=" not in item:
        raise ConfigError(f"{item}: override must look like key=value (e.g. train.conf_threshold=0.9)")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip(), value


def apply_overrides(cfg: Config, overrides: dict[str, Any] | list[str]) -> Config:
    """Set dotted keys on a copy of cfg and re-validate."""
    cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data), model=dataclasses.replace(cfg.model),
        train=dataclasses.replace(cfg.train),
    )
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    for key, value in items:
        if key in RETIRED_KEYS:  # only old checkpoints may carry them; a user setting one gets told where it went
            raise ConfigError(f"{key}: no longer a config key ({RETIRED_KEYS[key]})")
        nested: dict[str, Any] = {}
        cur = nested
        parts = key.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = value
        _merge(cfg, nested, "")
    return validate(cfg)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a Config from a nested dict (unknown keys are errors)."""
    cfg = Config()
    _merge(cfg, data or {}, "")
    return validate(cfg)


def read_yaml_mapping(path: str | os.PathLike, what: str = "config file") -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping; ConfigError naming the file otherwise."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: {what} not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML ({one_line(e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    return data


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Read a YAML recipe (or defaults when path is None) and apply dotted overrides."""
    data = read_yaml_mapping(path) if path is not None else {}
    cfg = Config()
    _merge(cfg, data, "")
    if overrides:
        return apply_overrides(cfg, overrides)
    return validate(cfg)
