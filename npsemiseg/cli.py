"""`npsemiseg` command line: one argparse tree, composed here from each layer's commands, bottom-up.

    data/cli.py         make-demo-data, cityscapes-trainids, make-splits
    models/cli.py       fetch-weights                               (ImageNet weights for the recipes)
    engine/cli.py       train, evaluate, predict, export            (single process, no Ray)
    distributed/cli.py  train --num-workers N / --ray ...           (Ray Train around the engine's train)
    tune/cli.py         sweep, sweep-summary; export --experiment   (Ray Tune + Optuna)

A layer's ``cli`` module imports neither Ray nor Optuna at import time (they load when a command that needs them
runs), and never a layer above it. Errors a user can cause (``UserError``) become one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import sys

from npsemiseg.data import cli as data_cli
from npsemiseg.distributed import cli as distributed_cli
from npsemiseg.engine import cli as engine_cli
from npsemiseg.errors import run_guarded
from npsemiseg.models import cli as models_cli
from npsemiseg.tune import cli as tune_cli


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every layer's subcommands."""
    parser = argparse.ArgumentParser(prog="npsemiseg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data_cli.register(sub)
    models_cli.register(sub)  # fetch-weights
    engine_cli.register(sub)
    distributed_cli.register(sub)  # extends engine's train
    tune_cli.register(sub)
    tune_cli.register_export(sub)  # extends engine's export
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: args.func(args), "npsemiseg")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
