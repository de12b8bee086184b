"""Data subcommands: ``make-demo-data``, ``cityscapes-trainids``, ``make-splits``.

    npsemiseg make-demo-data --out demo_data --scale demo --seed 0
    npsemiseg cityscapes-trainids /data/cityscapes
    npsemiseg make-splits --dataset voc --root /data/voc --split voc/classic/92 --out splits/voc_92
"""
from __future__ import annotations

import argparse

from npsemiseg.data.splits import PROTOCOLS


def _make_demo_data(args: argparse.Namespace) -> int:
    from npsemiseg.data.synthetic import make_demo_data

    make_demo_data(args.out, scale=args.scale, seed=args.seed, overwrite=args.force, variant=args.variant)
    print(f"wrote {args.out}/voc (VOCdevkit) and {args.out}/cityscapes ({args.scale}, seed {args.seed}, "
          f"variant {args.variant}); "
          f"summary in {args.out}/summary.json")
    return 0


def _cityscapes_trainids(args: argparse.Namespace) -> int:
    from npsemiseg.data.cityscapes import convert_trainids

    n = convert_trainids(args.root)
    print(f"wrote {n} *_gtFine_labelTrainIds.png files under {args.root}/gtFine")
    return 0


def _make_splits(args: argparse.Namespace) -> int:
    from npsemiseg.data.cityscapes import CityscapesTree
    from npsemiseg.data.splits import generate_split, get_protocol, write_split
    from npsemiseg.data.voc import VOCTree

    proto = get_protocol(args.split, args.dataset)
    tree = VOCTree(args.root) if args.dataset == "voc" else CityscapesTree(args.root)
    split = generate_split(tree, proto, args.seed)
    write_split(tree, split, args.out)
    i = split.info
    print(f"{i.name}: {i.n_labelled} labelled, {i.n_unlabelled} unlabelled, sha256 {i.checksum} -> {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the data subcommands to the ``npsemiseg`` parser."""
    p = sub.add_parser("make-demo-data", help="write synthetic VOC- and Cityscapes-format datasets")
    p.add_argument("--out", required=True, help="output folder (missing or empty)")
    p.add_argument("--scale", default="demo", help="tiny (tests, ~1 s) | demo (README sweep) | full")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", default="base", help="base | alt (other classes/textures: held-out data)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=_make_demo_data)

    p = sub.add_parser("cityscapes-trainids", help="write *_gtFine_labelTrainIds.png from *_gtFine_labelIds.png")
    p.add_argument("root", help="Cityscapes root (holding gtFine/)")
    p.set_defaults(func=_cityscapes_trainids)

    p = sub.add_parser("make-splits", help="generate a named label split and write labeled.txt / unlabeled.txt")
    p.add_argument("--dataset", choices=("voc", "cityscapes"), default="voc")
    p.add_argument("--root", required=True, help="data root (VOC: holding VOCdevkit/; Cityscapes: leftImg8bit/)")
    p.add_argument("--split", required=True, help=f"protocol name, e.g. {', '.join(list(PROTOCOLS)[:3])}, ...")
    p.add_argument("--seed", type=int, default=0, help="split seed (data.split_seed)")
    p.add_argument("--out", required=True, help="folder to write (missing, empty, or holding an earlier split)")
    p.set_defaults(func=_make_splits)
