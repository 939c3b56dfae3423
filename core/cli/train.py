"""``denoisekit train RECIPE``: train a recipe into its run folder (``runs/<name>/``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from denoisekit.cli.common import Subparsers, add_recipe_args
from denoisekit.engine.outputs import check_output_folder
from denoisekit.errors import CheckpointError, DenoisekitError
from denoisekit.files import RUN_OUTPUTS
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
        help="resume from a checkpoint (default: the run folder's last checkpoint)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in the folder (its recipe, versions, metrics, "
        "checkpoints, TensorBoard logs and samples; other files stay), once the new run is "
        "built; without it training into a folder holding a run is refused",
    )
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    # The engine modules import torch (a second or more): imported here, not at the top, so
    # `denoisekit --help` and a rejected recipe stay fast.
    from denoisekit.engine import distributed
    from denoisekit.engine.replace import FolderWriter

    recipe = load_recipe(args.recipe, args.overrides)
    if args.resume is not None and args.overwrite:
        raise DenoisekitError(
            "--resume continues the run in the folder, --overwrite replaces it: pass one"
        )
    out_dir = _run_folder(args, recipe)
    if args.resume is None:
        _check_init_from(recipe, out_dir)
    # Under torchrun every rank runs this (DDP); outside it the session does nothing.
    with distributed.session(recipe.train.device) as dist:
        if not dist.is_main:  # rank 0 alone writes the folder, and holds its lock
            if args.resume is None:  # (rank 0's writer checks it under the lock)
                check_output_folder(
                    out_dir, RUN_OUTPUTS, overwrite=args.overwrite, what="a run", fix=FIX
                )
            return _train(args, recipe, dist, None)
        with FolderWriter(
            out_dir,
            RUN_OUTPUTS,
            overwrite=args.overwrite,
            what="a run",
            fix=FIX,
            check=args.resume is None,
        ) as writer:
            return _train(args, recipe, dist, writer)


#: How else to go on, when the folder already holds a run.
FIX = "continue it with --resume, "


def _run_folder(args: argparse.Namespace, recipe: Recipe) -> Path:
    return args.out if args.out is not None else Path("runs") / recipe.name


def _check_init_from(recipe: Recipe, out_dir: Path) -> None:
    """``train.init_from`` must not name the run folder this command writes (or a file in
    it): ``--overwrite`` would replace the run it starts from."""
    name = recipe.train.init_from
    if name is None:
        return
    source, target = (recipe.root / name).resolve(), out_dir.resolve()
    if source == target or target in source.parents:
        where = f"{recipe.path}: " if recipe.path is not None else ""
        raise DenoisekitError(
            f"{where}train.init_from = {name!r} is in the run folder {out_dir} this command "
            "writes; train into another folder (--out DIR), or copy the run to start from"
        )


def _train(args: argparse.Namespace, recipe: Recipe, dist: Any, writer: Any) -> int:
    # torch-importing engine modules: lazy for the reason given in `command`.
    from denoisekit.engine import distributed
    from denoisekit.engine.build import build_run
    from denoisekit.engine.loop import TrainingInterrupted, resume_from, train
    from denoisekit.files import RunPaths

    out_dir = _run_folder(args, recipe)
    checkpoint = None
    if args.resume is not None:
        checkpoint = (
            RunPaths(out_dir).last_checkpoint if args.resume == "last" else Path(args.resume)
        )
        if not checkpoint.is_file():
            raise CheckpointError(
                f"{checkpoint}: checkpoint not found (enable [hooks.checkpoint] in the recipe, "
                "or pass --resume PATH)"
            )
    run = build_run(recipe, out_dir=out_dir, dist=dist)
    if checkpoint is not None:
        resume_from(run, checkpoint)
    # --overwrite: the old run goes aside once the new one is built and initialised.
    set_aside = writer.set_aside if writer is not None and checkpoint is None else None
    succeeded = False
    try:
        train(run, before_files=set_aside)
        succeeded = True
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
    finally:
        if writer is not None:
            writer.finish(succeeded)
    if dist.is_main:
        if writer is not None and writer.existing:
            print(f"--overwrite: replaced the previous run's {', '.join(writer.existing)}")
        print(f"trained {run.step} steps; run folder: {out_dir}")
        if recipe.trains_autoencoder and recipe.autoencoder_training.calibration_images:
            shift, scale = (", ".join(f"{v:.4g}" for v in b.tolist()) for b in _latents(run))
            print(f"latent calibration (in the checkpoint): shift [{shift}], scale [{scale}]")
    return 0


def _latents(run: Any) -> tuple[Any, Any]:
    """The autoencoder's calibrated ``shift`` and ``scale`` (the sampling weights')."""
    model = run.pm.hook.denoisekit_sampling_model(run=run)
    return model.shift, model.scale
