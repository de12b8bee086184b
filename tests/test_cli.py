"""CLI composition and error mapping: every verb is present with its flags; user errors become one line, exit 2."""
from __future__ import annotations

import pytest

from npsemiseg import cli
from npsemiseg.errors import UserError, one_line, run_guarded

# Every verb of `npsemiseg` and flags its --help must list (the layer that adds a flag in brackets).
VERBS = {
    "make-demo-data": ["--out", "--scale", "--seed", "--force"],
    "cityscapes-trainids": ["root"],
    "make-splits": ["--dataset", "--root", "--split", "--seed", "--out"],
    "fetch-weights": ["--out", "--from", "--backbone"],  # [models]
    "train": ["--config", "--use-gpu", "--no-resume",
              "--num-workers", "--ray", "--storage-path", "--max-failures"],  # [distributed]
    "evaluate": ["--checkpoint", "--data-root", "--samples", "--json"],
    "predict": ["--checkpoint", "--out", "--samples"],
    "export": ["--checkpoint", "--out", "--experiment", "--split"],  # [tune]: --experiment, --split
    "sweep": ["--dataset", "--space", "--data-root", "--splits", "--trials", "--max-concurrent", "--smoke-test",
              "--dry-run", "--storage-path", "--objectives", "--max-failures", "--keep-checkpoints"],
    "sweep-summary": ["experiment"],
}


def test_parser_has_every_layer_command() -> None:
    names = set(cli.build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert names == set(VERBS)


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_help_exits_0_and_lists_its_flags(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([verb, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: npsemiseg {verb}")
    missing = [flag for flag in VERBS[verb] if flag not in out]
    assert missing == []


def test_one_line_plain_and_from_dataloader_worker() -> None:
    assert one_line(UserError("a.yaml: bad\nmore")) == "a.yaml: bad"
    worker = UserError(
        "Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\nnpsemiseg.errors.UserError: img/3.jpg: corrupt image\n'
    )
    assert one_line(worker) == "img/3.jpg: corrupt image"
    assert one_line(str(worker)) == "img/3.jpg: corrupt image"  # the same from the message string


def test_one_line_from_a_ray_task_error() -> None:
    """Ray's wrapper puts "ray::<task>() (pid=..., ip=...)" and the worker's traceback before the message."""
    ray_text = ("\x1b[36mray::RayTrainWorker.run_train_fn()\x1b[39m (pid=123, ip=10.0.0.2, actor_id=ab)\n"
                '  File "loop.py", line 9, in fit\n    data = build_datasets(cfg)\n'
                "npsemiseg.errors.UserError: data.root: folder not found: /nope\n")
    assert one_line(ray_text) == "data.root: folder not found: /nope"
    assert one_line("ray:: is mentioned (pid=1) in a plain one-line message") == (
        "ray:: is mentioned (pid=1) in a plain one-line message")


def test_run_guarded_maps_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_guarded(lambda: None, "p") == 0
    assert run_guarded(lambda: 3, "p") == 3

    def bad() -> int:
        raise UserError("x.yaml: broken\ndetail")

    def stop() -> int:
        raise KeyboardInterrupt

    assert run_guarded(bad, "prog") == 2
    assert capsys.readouterr().err == "prog: error: x.yaml: broken\n"
    assert run_guarded(stop, "prog", "interrupted; rerun") == 130
    assert capsys.readouterr().err == "prog: interrupted; rerun\n"

    def bug() -> int:
        raise ValueError("a bug keeps its traceback")

    with pytest.raises(ValueError):
        run_guarded(bug, "prog")


def test_main_maps_user_error_to_exit_2(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    rc = cli.main(["train", "--config", str(tmp_path / "missing.yaml")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "missing.yaml" in err and "Traceback" not in err


@pytest.mark.parametrize(("argv", "match"), [
    (["train", "--config", "{missing}", "--num-workers", "0"], "missing.yaml"),  # the recipe is checked first
    (["export"], "--checkpoint and --out are required"),
    (["export", "--experiment", "x", "--out", "y"], "not both"),
    (["sweep-summary", "{missing}"], "missing.yaml"),
])
def test_composed_commands_map_user_errors(argv: list[str], match: str, tmp_path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.replace("{missing}", str(tmp_path / "missing.yaml")) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("npsemiseg: error: ") and match in err and err.count("\n") == 1


def test_num_workers_checked_once_the_recipe_loads(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\n")
    assert cli.main(["train", "--config", str(recipe), "--num-workers", "0"]) == 2
    assert "--num-workers: must be >= 1, got 0" in capsys.readouterr().err
