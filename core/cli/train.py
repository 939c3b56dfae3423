"""``denoisekit train RECIPE``: train a recipe into its run folder (``runs/<name>/``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from denoisekit.cli.common import Subparsers, add_recipe_args
from denoisekit.engine.outputs import RUN_OUTPUTS, check_output_folder, clear_outputs
from denoisekit.errors import CheckpointError, DenoisekitError
from denoisekit.host.recipe import Recipe, load_recipe


def register(sub: Subparsers) -> None:
    """Add ``train``."""
    parser = sub.add_parser("train", help="train a recipe; leaves runs/<name>/")
    add_recipe_args(parser)
    parser.add_argument("--out", type=Path, help="the run folder (default: runs/<recipe name>)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="last",
        metavar="CHECKPOINT",
        help="resume from a checkpoint (default: the run folder's checkpoints/last.pt)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in the folder: its recipe.toml, versions.json, "
        "metrics.jsonl, checkpoints/, tensorboard/ and samples/ are removed first (other "
        "files stay); without it training into a folder holding a run is refused",
    )
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    # The engine modules import torch (a second or more): imported here, not at the top, so
    # `denoisekit --help` and a rejected recipe stay fast.
    from denoisekit.engine import distributed

    recipe = load_recipe(args.recipe, args.overrides)
    if args.resume is not None and args.overwrite:
        raise DenoisekitError(
            "--resume continues the run in the folder, --overwrite replaces it: pass one"
        )
    if args.resume is None:  # every rank checks before any rank writes
        check_output_folder(
            _run_folder(args, recipe),
            RUN_OUTPUTS,
            overwrite=args.overwrite,
            what="a run",
            fix="continue it with --resume, ",
        )
    # Under torchrun every rank runs this (DDP); outside it the session does nothing.
    with distributed.session(recipe.train.device) as dist:
        return _train(args, recipe, dist)


def _run_folder(args: argparse.Namespace, recipe: Recipe) -> Path:
    return args.out if args.out is not None else Path("runs") / recipe.name


def _train(args: argparse.Namespace, recipe: Recipe, dist: Any) -> int:
    # torch-importing engine modules: lazy for the reason given in `command`.
    from denoisekit.engine import distributed
    from denoisekit.engine.build import build_run
    from denoisekit.engine.loop import TrainingInterrupted, resume_from, train

    out_dir = _run_folder(args, recipe)
    checkpoint = None
    if args.resume is not None:
        checkpoint = (
            out_dir / "checkpoints" / "last.pt" if args.resume == "last" else Path(args.resume)
        )
        if not checkpoint.is_file():
            raise CheckpointError(
                f"{checkpoint}: checkpoint not found (enable [hooks.checkpoint] in the recipe, "
                "or pass --resume PATH)"
            )
    if args.overwrite and dist.is_main:
        removed = clear_outputs(out_dir, RUN_OUTPUTS)
        if removed:
            print(f"--overwrite: removed the previous run's {', '.join(removed)} from {out_dir}")
    run = build_run(recipe, out_dir=out_dir, dist=dist)
    if checkpoint is not None:
        resume_from(run, checkpoint)
    try:
        train(run)
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, TrainingInterrupted) else 2
        if dist.enabled:
            distributed.shutdown(dist, failed=True)  # peers may be mid-collective
            if dist.is_main:
                print(
                    f"denoisekit: stopped at step {run.step} (torchrun stops every rank on a "
                    f"signal or when one fails); resume with: torchrun "
                    f"--nproc_per_node=N -m denoisekit train {args.recipe} --out {out_dir} "
                    "--resume (any number of ranks)",
                    file=sys.stderr,
                )
            return 128 + signum
        print(
            f"denoisekit: interrupted at step {run.step}; resume with: denoisekit train "
            f"{args.recipe} --out {out_dir} --resume",
            file=sys.stderr,
        )
        return 128 + signum
    if dist.is_main:
        print(f"trained {run.step} steps; run folder: {out_dir}")
    return 0
