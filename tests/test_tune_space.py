"""Search-space YAML: parsing, Optuna distributions, grids, and validation errors that name the file and key."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from npsemiseg.errors import ConfigError, UserError
from npsemiseg.tune.resources import TrialResources
from npsemiseg.tune.space import load_space

REPO = Path(__file__).resolve().parents[1]

GOOD = """
splits: [demo/1_8, demo/1_4]
overrides: {train.iters: 40, train.eval_every: 10}
asha: {grace_period: 10}
params:
  train.conf_threshold: {type: float, low: 0.5, high: 0.95}
  train.lr: {type: logfloat, low: 0.001, high: 0.1}
  model.latent_dim: {type: categorical, choices: [8, 16, 32]}
  model.bank_capacity: {type: int, low: 64, high: 1024, log: true}
  train.unsup_weight: {type: float, low: 0.5, high: 2.0, step: 0.5}
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p


def test_parse_good_space(tmp_path: Path) -> None:
    space = load_space(_write(tmp_path, GOOD))
    assert space.splits == ["demo/1_8", "demo/1_4"]
    assert space.keys == ["train.conf_threshold", "train.lr", "model.latent_dim", "model.bank_capacity",
                          "train.unsup_weight"]
    d = space.optuna_distributions()
    assert d["train.lr"] == optuna.distributions.FloatDistribution(0.001, 0.1, log=True)
    assert d["model.bank_capacity"] == optuna.distributions.IntDistribution(64, 1024, log=True)
    assert d["model.latent_dim"] == optuna.distributions.CategoricalDistribution([8, 16, 32])
    assert d["train.unsup_weight"].step == 0.5
    cfg = space.base_config({"train.lr": 0.02})
    assert cfg.train.iters == 40 and cfg.train.eval_every == 10 and cfg.train.lr == 0.02
    assert space.asha == {"grace_period": 10}


@pytest.mark.parametrize("params, match", [
    ("train.conf_threshold: {type: float, low: 0.5, high: 1.5}", r"params\.train\.conf_threshold: value 1\.5"),
    ("train.nope: {type: float, low: 0.1, high: 0.2}", r"params\.train\.nope: .*unknown config key"),
    ("train.lr: {type: float, low: 0.1, high: 0.01}", r"params\.train\.lr: low must be < high"),
    ("train.lr: {type: logfloat, low: 0.0, high: 0.01}", r"params\.train\.lr\.low: must be > 0 on a log scale"),
    ("train.lr: {type: gaussian, low: 0.0, high: 0.01}", r"params\.train\.lr\.type: must be one of"),
    ("model.latent_dim: {type: categorical, choices: []}", r"params\.model\.latent_dim\.choices: must be a non-empty"),
    ("model.latent_dim: {type: int, low: 8.5, high: 32}", r"params\.model\.latent_dim\.low: expected an integer"),
    ("model.latent_dim: {type: categorical, choices: [8, 0]}", r"params\.model\.latent_dim: value 0 is invalid"),
    ("train.lr: {type: float, low: 0.001, high: 0.1, log: true, step: 0.01}", r"params\.train\.lr\.step"),
    ("train.lr: {type: float, low: 0.001, hi: 0.1}", r"params\.train\.lr: unknown field"),
    ("train.lr: 0.01", r"params\.train\.lr: expected a mapping"),
    ("train.iters: {type: int, low: 10, high: 20}", r"params\.train\.iters: cannot be searched"),
])
def test_bad_params_name_file_and_key(tmp_path: Path, params: str, match: str) -> None:
    p = _write(tmp_path, f"splits: [demo/1_8]\nparams:\n  {params}\n")
    with pytest.raises(ConfigError, match=match) as e:
        load_space(p)
    assert str(e.value).startswith(str(p))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text, match", [
    ("params: {}\n", r": params: expected a non-empty mapping"),
    ("splits: demo/1_8\nparams: {train.lr: {type: float, low: 0.01, high: 0.1}}\n", r": splits: expected a list"),
    ("recipe: nowhere.yaml\nparams: {train.lr: {type: float, low: 0.01, high: 0.1}}\n", r"recipe: file not found"),
    ("overrides: {train.lr: 0.1}\nparams: {train.lr: {type: float, low: 0.01, high: 0.1}}\n",
     r"overrides: train\.lr is also searched"),
    ("overrides: {train.iters: 0}\nparams: {train.lr: {type: float, low: 0.01, high: 0.1}}\n",
     r"train\.iters: must be >= 1"),
    ("search: 1\nparams: {train.lr: {type: float, low: 0.01, high: 0.1}}\n", r": search: unknown key"),
    ("params: [1, 2\n", r"invalid YAML"),
])
def test_bad_files(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_space(_write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="search-space file not found"):
        load_space(tmp_path / "nope.yaml")


@pytest.mark.parametrize("name", ["demo.yaml", "voc.yaml", "cityscapes.yaml"])
def test_shipped_spaces_are_valid(name: str) -> None:
    """The shipped files search the parameters the issue asks for and validate against their recipes."""
    space = load_space(REPO / "configs" / "search" / name)
    assert space.recipe is not None and space.recipe.is_file()
    assert {"train.conf_threshold", "model.latent_dim", "model.bank_capacity", "train.lr",
            "train.unsup_weight"} <= set(space.keys)
    assert len(space.splits) >= 2


def test_resources_rules() -> None:
    r = TrialResources(workers=1, cpus_per_worker=2, gpus_per_trial=0.5)
    assert r.per_worker() == {"CPU": 2.0, "GPU": 0.5}
    assert r.fits({"CPU": 16, "GPU": 1}) == 2
    assert TrialResources(workers=4, cpus_per_worker=8, gpus_per_trial=4).per_worker()["GPU"] == 1
    with pytest.raises(UserError, match="several ranks of one trial on one GPU"):
        TrialResources(workers=2, gpus_per_trial=1)
    with pytest.raises(UserError, match="do not split evenly"):
        TrialResources(workers=2, gpus_per_trial=3)
    with pytest.raises(UserError, match="--cpus-per-worker"):
        TrialResources(cpus_per_worker=0)


def test_default_experiment_name_follows_a_non_default_space() -> None:
    import argparse

    from npsemiseg.tune.cli import add_sweep_args, default_experiment

    p = argparse.ArgumentParser()
    add_sweep_args(p, "voc")
    assert default_experiment(p.parse_args([]), "voc") == "voc_demo"
    assert default_experiment(p.parse_args(["--space", "configs/search/demo.yaml"]), "voc") == "voc_demo"
    assert default_experiment(p.parse_args(["--space", "configs/search/semi.yaml"]), "voc") == "voc_demo_semi"
    assert default_experiment(p.parse_args(["--smoke-test"]), "voc") == "voc_smoke"
    real = p.parse_args(["--data-root", "/data/voc", "--space", "configs/search/voc.yaml"])
    assert default_experiment(real, "voc") == "voc_search"


def test_semi_search_space_loads_and_its_extremes_validate() -> None:
    space = load_space(REPO / "configs" / "search" / "semi.yaml")
    assert set(space.keys) >= {"train.conf_threshold", "train.strong_views", "train.threshold_mode"}
    assert space.splits == ["demo/1_16", "demo/1_8"]
    cfg = space.base_config([])
    assert (cfg.train.iters, cfg.data.crop_size) == (600, 64)


def test_local_instance_fits_max_concurrent_single_cpu_trials() -> None:
    from npsemiseg.tune.resources import local_cpus

    one = TrialResources(workers=1, cpus_per_worker=1.0)
    assert one.fits({"CPU": 2.0}) == 1  # the trial drivers' slivers would cost a whole core ...
    for cores, trials in ((2, 2), (4, 4), (16, 8), (8, 150)):
        assert one.fits({"CPU": float(local_cpus(cores, trials))}) >= min(cores, trials)  # ... not with them added
    assert local_cpus(2, 2) == 3 and local_cpus(4, 100) == 5 and local_cpus(4, 101) == 6


def test_plan_warns_when_fewer_trials_fit_than_max_concurrent(tmp_path: Path) -> None:
    import argparse

    from npsemiseg.tune.cli import add_sweep_args, settings_from_args
    from npsemiseg.tune.sweep import plan_lines

    p = argparse.ArgumentParser()
    add_sweep_args(p, "voc")
    args = p.parse_args(["--dry-run", "--max-concurrent", "2", "--demo-root", str(tmp_path / "demo"),
                         "--storage-path", str(tmp_path / "rr"), "--local-dir", str(tmp_path / "rr")])
    settings = settings_from_args(args, "voc")
    tight = [line for line in plan_lines(settings, {"CPU": 2.0}) if line.startswith("warning")]
    assert len(tight) == 1 and "only 1 of --max-concurrent 2" in tight[0]
    assert not [line for line in plan_lines(settings, {"CPU": 3.0}) if line.startswith("warning")]
