"""``denoisekit data pack RECIPE --out DIR``: a recipe's data as tar shards (docs/scaling.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from denoisekit.cli.common import Subparsers, add_set_arg


def register(sub: Subparsers) -> None:
    """Add ``data`` and its action ``pack``."""
    parser = sub.add_parser("data", help="move a dataset to tar shards")
    actions = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    pack = actions.add_parser(
        "pack",
        help="write a recipe's data as WebDataset tar shards and a shard index",
    )
    pack.add_argument(
        "recipe",
        metavar="RECIPE|TYPE",
        help="a recipe file (its [data] table; other tables may be left out) or a data "
        "type name, e.g. digits",
    )
    pack.add_argument("--out", type=Path, required=True, help="the folder of the shards")
    pack.add_argument(
        "--per-shard", type=int, default=1000, metavar="N", help="samples per shard (1000)"
    )
    pack.add_argument(
        "--split",
        choices=("train", "eval"),
        default="train",
        help="the data's training split (default) or the one evaluation reads",
    )
    pack.add_argument("--prefix", default="train", help="shard names: PREFIX-000000.tar, ...")
    pack.add_argument(
        "--workers", type=int, default=0, metavar="N", help="DataLoader workers reading the data"
    )
    pack.add_argument(
        "--shuffle",
        type=int,
        default=None,
        metavar="SEED",
        help="write the samples in a permutation seeded by SEED (else in the data's order); "
        'mixes each shard, for data.order = "shards"',
    )
    pack.add_argument(
        "--overwrite", action="store_true", help="replace the shards of an earlier pack in --out"
    )
    add_set_arg(pack, "override a recipe key (VALUE in TOML syntax), e.g. --set data.image_size=32")
    pack.set_defaults(func=pack_command)


def pack_command(args: argparse.Namespace) -> int:
    # torch-importing engine module: lazy, so `denoisekit --help` stays fast.
    from denoisekit.engine.pack import build_unaugmented, check_output, data_recipe, pack_dataset

    # Before any work (building the data may read every file): the output and the count.
    check_output(args.out, args.prefix, per_shard=args.per_shard, overwrite=args.overwrite)
    recipe, registry = data_recipe(args.recipe, args.overrides)
    dataset = build_unaugmented(recipe, registry, train=args.split == "train")
    result = pack_dataset(
        dataset,
        args.out,
        per_shard=args.per_shard,
        prefix=args.prefix,
        overwrite=args.overwrite,
        num_workers=args.workers,
        shuffle=args.shuffle,
    )
    c, size, _ = result.image_shape
    print(
        f"wrote {result.samples} samples in {len(result.shards)} shards to {args.out} "
        f"(index {result.index.name}); read them with:"
    )
    print('[data]\ntype = "shards"')
    print(f'shards = "{result.index.resolve()}"')
    print(f"image_size = {size}")
    print(f'mode = "{"L" if c == 1 else "RGB"}"')
    if result.num_classes:
        print(f"num_classes = {result.num_classes}")
    return 0
