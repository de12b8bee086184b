"""Config: YAML <-> dataclasses, dotted overrides, validation errors that name the key."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from npsemiseg.config import Config, apply_overrides, config_from_dict, load_config, parse_override
from npsemiseg.errors import ConfigError


def test_defaults_validate_and_roundtrip(tmp_path: Path) -> None:
    cfg = load_config()
    assert cfg.model.latent_dim == 32 and cfg.model.bank_capacity == 2560
    p = tmp_path / "c.yaml"
    p.write_text(cfg.to_yaml())
    again = load_config(p)
    assert again.to_dict() == cfg.to_dict()


def test_overrides_are_typed_and_do_not_mutate_original() -> None:
    cfg = Config()
    new = apply_overrides(cfg, ["train.conf_threshold=0.9", "model.latent_dim=16", "train.semi=false"])
    assert new.train.conf_threshold == pytest.approx(0.9)
    assert new.model.latent_dim == 16 and isinstance(new.model.latent_dim, int)
    assert new.train.semi is False
    assert cfg.train.conf_threshold == pytest.approx(0.95) and cfg.model.latent_dim == 32
    assert apply_overrides(cfg, {"model.latent_dim": 8.0}).model.latent_dim == 8


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.conf_threshold=1.5", "train.conf_threshold"),
        ("model.latent_dim=0", "model.latent_dim"),
        ("model.latent_dim=2.5", "model.latent_dim"),
        ("model.head=transformer", "model.head"),
        ("train.nope=1", "train.nope"),
        ("data.crop_size=abc", "data.crop_size"),
        ("model.output_stride=32", "model.output_stride"),
        ("train.semi=maybe", "train.semi"),
        ("train.lr=nan", "train.lr"),
    ],
)
def test_invalid_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        apply_overrides(Config(), [override])
    assert str(e.value).startswith(key + ":")
    assert "\n" not in str(e.value)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        load_config(bad)
    nested = tmp_path / "nested.yaml"
    nested.write_text(yaml.safe_dump({"train": 3}))
    with pytest.raises(ConfigError, match="^train: expected a mapping"):
        load_config(nested)


def test_parse_override_and_dict() -> None:
    assert parse_override("a.b=1e-3") == ("a.b", 1e-3)
    with pytest.raises(ConfigError):
        parse_override("no_equals")
    cfg = config_from_dict({"model": {"head": "plain"}, "seed": 3})
    assert cfg.model.head == "plain" and cfg.seed == 3
    assert cfg.num_classes() == 21
    assert config_from_dict({"data": {"dataset": "cityscapes"}}).num_classes() == 19


def test_retired_key_override_names_its_replacement_but_old_files_still_load() -> None:
    from npsemiseg.config import Config, ConfigError, apply_overrides, config_from_dict

    with pytest.raises(ConfigError, match=r"train\.fail_at_step: .*NPSEMISEG_FAIL_AT_STEP"):
        apply_overrides(Config(), ["train.fail_at_step=2"])
    data = Config().to_dict()
    data["train"]["fail_at_step"] = 3  # as written by checkpoints before the key was retired
    assert config_from_dict(data).train.iters == Config().train.iters
