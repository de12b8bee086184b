"""Search spaces: a small YAML file users edit, validated once against the base recipe.

    space = load_space("configs/search/demo.yaml")
    space.optuna_distributions()   # {"train.lr": FloatDistribution(...), ...} for OptunaSearch
    space.base_config(["data.root=demo_data/voc"])   # recipe + proxy overrides -> Config

File format (every key of ``params`` is a dotted Config key)::

    recipe: configs/demo.yaml          # base recipe (relative to the cwd or to the repository root)
    splits: [demo/1_8, demo/1_4]       # one Optuna study + one Tuner per split
    overrides: {train.iters: 60}       # the short proxy schedule every trial runs
    params:
      train.conf_threshold: {type: float, low: 0.5, high: 0.95}
      train.lr: {type: float, low: 0.001, high: 0.05, log: true}
      model.latent_dim: {type: categorical, choices: [8, 16, 32]}
      model.bank_capacity: {type: int, low: 64, high: 1024, log: true}

Types: ``float`` (``log``, ``step``), ``logfloat`` (= float with log), ``int`` (``log``, ``step``), ``categorical``
(``choices``). Every error names the file and the key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npsemiseg.config import Config, apply_overrides, load_config, read_yaml_mapping
from npsemiseg.errors import ConfigError

PARAM_TYPES = ("float", "logfloat", "int", "categorical")
_TOP_KEYS = ("recipe", "splits", "overrides", "params", "asha")
_PARAM_KEYS = {"type", "low", "high", "log", "step", "choices"}


@dataclass(frozen=True)
class Param:
    """One searched hyper-parameter (a dotted Config key and its range)."""

    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def distribution(self) -> Any:
        """The matching ``optuna.distributions`` object."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.type == "categorical":
            return CategoricalDistribution(list(self.choices))
        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def bounds_values(self) -> list[Any]:
        """The extreme values (or every choice): what validation tries on the base config."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]


@dataclass
class SearchSpace:
    """A parsed search-space file: base recipe, splits, proxy overrides, searched params, ASHA defaults."""

    path: Path
    recipe: Path | None
    splits: list[str]
    params: list[Param]
    overrides: dict[str, Any] = field(default_factory=dict)
    asha: dict[str, Any] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def optuna_distributions(self) -> dict[str, Any]:
        """``{dotted key: optuna distribution}`` (the space given to ``OptunaSearch``)."""
        return {p.key: p.distribution() for p in self.params}

    def base_config(self, extra: dict[str, Any] | list[str] | None = None) -> Config:
        """The recipe with the proxy overrides and then ``extra`` applied (validated)."""
        cfg = load_config(self.recipe) if self.recipe else Config()
        cfg = apply_overrides(cfg, self.overrides) if self.overrides else cfg
        return apply_overrides(cfg, extra) if extra else cfg

    def check_against(self, cfg: Config) -> None:
        """Apply each param's extreme values to ``cfg`` so an out-of-range value fails now, not in trial 7."""
        for p in self.params:
            for v in p.bounds_values():
                try:
                    apply_overrides(cfg, {p.key: v})
                except ConfigError as e:
                    raise ConfigError(f"{self.path}: params.{p.key}: value {v!r} is invalid ({e})") from None


def _err(path: Path, key: str, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {key}: {msg}")


def _number(path: Path, key: str, value: Any, integer: bool) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _err(path, key, f"expected a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise _err(path, key, f"expected a finite number, got {value!r}")
    if integer:
        if float(value) != int(value):
            raise _err(path, key, f"expected an integer, got {value!r}")
        return int(value)
    return float(value)


def parse_param(path: Path, key: str, spec: Any) -> Param:
    """Validate one ``params`` entry."""
    where = f"params.{key}"
    if not isinstance(spec, dict):
        raise _err(path, where, f"expected a mapping like {{type: float, low: 0.1, high: 1.0}}, got {spec!r}")
    unknown = set(spec) - _PARAM_KEYS
    if unknown:
        raise _err(path, where, f"unknown field(s) {sorted(unknown)}; allowed: {sorted(_PARAM_KEYS)}")
    typ = spec.get("type")
    if typ not in PARAM_TYPES:
        raise _err(path, f"{where}.type", f"must be one of {PARAM_TYPES}, got {typ!r}")
    if typ == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _err(path, f"{where}.choices", "must be a non-empty list")
        if len({repr(c) for c in choices}) != len(choices):
            raise _err(path, f"{where}.choices", f"has duplicates: {choices}")
        for c in choices:
            if not (c is None or isinstance(c, (bool, int, float, str))):
                raise _err(path, f"{where}.choices", f"values must be scalars, got {c!r}")
        extra = {"low", "high", "log", "step"} & set(spec)
        if extra:
            raise _err(path, where, f"categorical takes only 'choices', not {sorted(extra)}")
        return Param(key=key, type=typ, choices=tuple(choices))
    integer = typ == "int"
    for k in ("low", "high"):
        if k not in spec:
            raise _err(path, f"{where}.{k}", "is required")
    low = _number(path, f"{where}.low", spec["low"], integer)
    high = _number(path, f"{where}.high", spec["high"], integer)
    if not low < high:
        raise _err(path, where, f"low must be < high, got low={low}, high={high}")
    log = spec.get("log", typ == "logfloat")
    if not isinstance(log, bool):
        raise _err(path, f"{where}.log", f"expected true/false, got {log!r}")
    if typ == "logfloat" and not log:
        raise _err(path, f"{where}.log", "logfloat is always log-scaled")
    if log and low <= 0:
        raise _err(path, f"{where}.low", f"must be > 0 on a log scale, got {low}")
    step = spec.get("step")
    if step is not None:
        step = _number(path, f"{where}.step", step, integer)
        if step <= 0:
            raise _err(path, f"{where}.step", f"must be > 0, got {step}")
        if log and not (integer and step == 1):
            raise _err(path, f"{where}.step", "cannot be combined with log (Optuna samples log scales continuously)")
    return Param(key=key, type="float" if typ == "logfloat" else typ, low=low, high=high, log=log, step=step)


def _resolve_recipe(path: Path, recipe: str) -> Path:
    """A recipe path relative to the cwd, else to the search file's folder or its ancestors (the repo root)."""
    p = Path(recipe)
    if p.is_absolute():
        candidates = [p]
    else:
        here = path.resolve().parent
        candidates = [Path.cwd() / p, here / p, *(a / p for a in here.parents[:2])]
    for c in candidates:
        if c.is_file():
            return c
    raise _err(path, "recipe", f"file not found: {recipe}")


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file (raises ConfigError naming the file and key)."""
    path = Path(path)
    data = read_yaml_mapping(path, "search-space file")
    unknown = set(data) - set(_TOP_KEYS)
    if unknown:
        raise _err(path, sorted(unknown)[0], f"unknown key; allowed: {list(_TOP_KEYS)}")
    recipe = data.get("recipe")
    if recipe is not None and not isinstance(recipe, str):
        raise _err(path, "recipe", f"expected a path, got {recipe!r}")
    recipe_path = _resolve_recipe(path, recipe) if recipe else None

    splits = data.get("splits", [])
    if not isinstance(splits, list) or not all(isinstance(s, str) and s for s in splits):
        raise _err(path, "splits", f"expected a list of protocol names, got {splits!r}")
    if len(set(splits)) != len(splits):
        raise _err(path, "splits", f"has duplicates: {splits}")

    overrides = data.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise _err(path, "overrides", f"expected a mapping of dotted keys, got {overrides!r}")
    asha = data.get("asha") or {}
    if not isinstance(asha, dict) or set(asha) - {"grace_period", "reduction_factor", "time_attr"}:
        raise _err(path, "asha", "expected a mapping with grace_period, reduction_factor, time_attr")

    raw = data.get("params")
    if not isinstance(raw, dict) or not raw:
        raise _err(path, "params", "expected a non-empty mapping of dotted config keys")
    params = [parse_param(path, str(k), v) for k, v in raw.items()]
    for fixed in ("train.iters", "train.eval_every", "data.split"):
        if fixed in raw:
            raise _err(path, f"params.{fixed}", "cannot be searched (it fixes the budget or the split); "
                                                "set it under overrides or pass --splits")
    clash = set(overrides) & {p.key for p in params}
    if clash:
        raise _err(path, "overrides", f"{sorted(clash)[0]} is also searched in params")

    space = SearchSpace(path=path, recipe=recipe_path, splits=list(splits), params=params,
                        overrides=dict(overrides), asha=dict(asha))
    try:
        base = space.base_config()
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    space.check_against(base)
    return space
