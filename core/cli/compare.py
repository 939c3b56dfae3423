"""``denoisekit compare RECIPE... | --run RUN``: variants side by side in one TensorBoard log."""

from __future__ import annotations

import argparse
from pathlib import Path

from denoisekit.cli.common import Subparsers, add_set_arg, add_trust_arg
from denoisekit.engine.outputs import COMPARE_OUTPUTS, check_output_folder
from denoisekit.errors import DenoisekitError


def register(sub: Subparsers) -> None:
    """Add ``compare``."""
    parser = sub.add_parser("compare", help="run variants of recipes side by side in TensorBoard")
    parser.add_argument("recipes", type=Path, nargs="*", metavar="RECIPE")
    parser.add_argument(
        "--run",
        type=Path,
        metavar="RUN_OR_CHECKPOINT",
        help="reuse this trained run for every variant (they may vary only sampling options)",
    )
    parser.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="KEY.PATH=V1,V2,...",
        help="a key and its values (TOML syntax); variants are the product of all --vary",
    )
    add_set_arg(parser, "override every variant's recipe")
    parser.add_argument("--out", type=Path, default=Path("runs/compare"), help="the log directory")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier comparison in --out (its compare.*, variants/, train/)",
    )
    add_trust_arg(parser)
    parser.add_argument(
        "--metric", action="append", default=[], help="metrics to compute (fd, nll, ...)"
    )
    parser.add_argument("-n", "--num", type=int, default=64, help="images sampled per variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dry-run", action="store_true", help="list the variants and stop")
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    if bool(args.recipes) == (args.run is not None):
        raise DenoisekitError("compare takes recipe files or --run RUN_OR_CHECKPOINT (one of)")
    if not args.dry_run:  # before the recipes load (again under the writer's lock below)
        check_output_folder(
            args.out, COMPARE_OUTPUTS, overwrite=args.overwrite, what="a comparison", fix=""
        )
    # The engine's compare module imports torch (a second or more): imported here, not at
    # the top, so `denoisekit --help` and a rejected argument stay fast.
    from denoisekit.engine.compare import plan, run_compare, training_groups
    from denoisekit.engine.replace import FolderWriter
    from denoisekit.engine.run_folder import open_run

    stored = open_run(args.run, trust_plugins=args.trust_plugins) if args.run else None
    variants = plan(args.recipes, args.vary, args.overrides, from_run=stored)
    groups = training_groups(variants)
    if args.dry_run:
        trainings = 0 if args.run is not None else len(groups)
        print(f"{len(variants)} variant(s), {trainings} training run(s):")
        for group, members in groups.items():
            print(f"  train {group}")
            for variant in members:
                print(f"    {variant.name}")
        return 0
    # Built beside --out and swapped in when complete: an earlier comparison stays until then.
    with FolderWriter(
        args.out, COMPARE_OUTPUTS, overwrite=args.overwrite, what="a comparison"
    ) as writer:
        run_compare(
            variants,
            out_dir=writer.staged(),
            num_samples=args.num,
            seed=args.seed,
            batch_size=args.batch_size,
            metrics=args.metric,
            from_run=stored,
        )
        writer.commit()
    if writer.existing:
        print(f"--overwrite: replaced the previous {', '.join(writer.existing)} in {args.out}")
    print(
        f"wrote {args.out / 'compare.md'}, compare.csv, compare.png; "
        f"open with: tensorboard --logdir {args.out}"
    )
    return 0
