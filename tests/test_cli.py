"""CLI error mapping: user errors become one line on stderr and exit code 2."""
from __future__ import annotations

import pytest

from npsemiseg import cli
from npsemiseg.errors import UserError, one_line


def test_parser_has_every_layer_command() -> None:
    names = set(cli.build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert {"make-demo-data", "cityscapes-trainids", "make-splits", "train", "evaluate", "predict", "export"} <= names


def test_one_line_plain_and_from_dataloader_worker() -> None:
    assert one_line(UserError("a.yaml: bad\nmore")) == "a.yaml: bad"
    worker = UserError(
        "Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\nnpsemiseg.errors.UserError: img/3.jpg: corrupt image\n'
    )
    assert one_line(worker) == "img/3.jpg: corrupt image"
    assert one_line(str(worker)) == "img/3.jpg: corrupt image"  # the same from the message string


def test_main_maps_user_error_to_exit_2(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    rc = cli.main(["train", "--config", str(tmp_path / "missing.yaml")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "missing.yaml" in err and "Traceback" not in err
