"""Ray Train flags of ``npsemiseg train``: the engine's command, run on a Ray Train worker group when asked.

    npsemiseg train --config configs/demo.yaml --num-workers 2 [--use-gpu] [--storage-path P] [--max-failures K]
    npsemiseg train --config configs/demo.yaml --ray          # one Ray Train worker

With ``--num-workers 1`` and no ``--ray`` the engine's plain single-process ``train`` runs, unchanged. Ray is
imported only when the command runs on Ray.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable

from npsemiseg.errors import UserError


def _wrap_train(plain: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``train``'s function: the engine's ``plain`` one for a single local worker, else ``run_distributed``."""

    def train(args: argparse.Namespace) -> int:
        if args.num_workers == 1 and not args.ray:
            return plain(args)
        from npsemiseg.distributed.launch import run_distributed
        from npsemiseg.engine.cli import format_metrics, load_train_config

        cfg = load_train_config(args)
        if args.num_workers < 1:
            raise UserError(f"--num-workers: must be >= 1, got {args.num_workers}")
        metrics = run_distributed(cfg, num_workers=args.num_workers, use_gpu=args.use_gpu,
                                  storage_path=args.storage_path, max_failures=args.max_failures)
        print(format_metrics(metrics, title=f"{cfg.name}: final metrics (checkpoints in the Ray run's storage)"))
        return 0

    return train


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the Ray Train flags to the ``train`` command the engine registered (call after ``engine.cli``)."""
    p = subparsers.choices.get("train")
    if p is None:
        raise RuntimeError("distributed.cli.register: register engine.cli first (it owns the train command)")
    g = p.add_argument_group("Ray Train (data-parallel)")
    g.add_argument("--num-workers", type=int, default=1, help="data-parallel workers (> 1 uses Ray Train)")
    g.add_argument("--ray", action="store_true", help="use Ray Train even with one worker")
    g.add_argument("--storage-path", default=None, help="Ray Train storage (local dir, NFS or URI)")
    g.add_argument("--max-failures", type=int, default=0, help="Ray Train: worker-group restarts allowed")
    p.set_defaults(func=_wrap_train(p.get_default("func")))
