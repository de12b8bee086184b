"""`npsemiseg` command line: one argparse tree, subcommands registered by each layer.

Each layer owns a small ``cli`` module with ``register(subparsers)`` that adds its subcommands and sets
``func(args) -> int``. Errors a user can cause (``UserError``) become one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from npsemiseg.errors import UserError, one_line

# Layers that contribute subcommands, bottom-up. A module that is missing (layer not built yet) is skipped.
COMMAND_MODULES = (
    "npsemiseg.data.cli",
    "npsemiseg.models.cli",  # cluster: fetch-weights
    "npsemiseg.engine.cli",
    "npsemiseg.distributed.cli",
    "npsemiseg.tune.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every layer's subcommands."""
    parser = argparse.ArgumentParser(prog="npsemiseg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"npsemiseg: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("npsemiseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
