"""``denoisekit import-diffusers DIR --out RUN`` and ``denoisekit export-diffusers RUN --out
DIR``: diffusers model folders in and out (docs/interop.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from denoisekit.cli.common import Subparsers, add_trust_arg


def register(sub: Subparsers) -> None:
    """Add ``import-diffusers`` and ``export-diffusers``."""
    parser = sub.add_parser(
        "import-diffusers",
        help="a diffusers UNet2DModel folder (and its scheduler config), or an AutoencoderKL "
        "folder, as a run folder",
    )
    parser.add_argument(
        "folder",
        type=Path,
        metavar="DIR",
        help="the model folder (config.json, diffusion_pytorch_model.safetensors or .bin), or "
        "a pipeline folder holding unet/ and scheduler/",
    )
    parser.add_argument("--out", type=Path, required=True, help="the run folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    parser.set_defaults(func=import_command)

    parser = sub.add_parser(
        "export-diffusers",
        help="a run's EMA weights as a diffusers pipeline folder (DDIMPipeline.from_pretrained); "
        "an autoencoder run's as an AutoencoderKL folder",
    )
    parser.add_argument("run", type=Path, metavar="RUN_OR_CHECKPOINT")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the exported model already in --out"
    )
    add_trust_arg(parser)
    parser.set_defaults(func=export_command)


def import_command(args: argparse.Namespace) -> int:
    # The engine imports torch: imported here, so `denoisekit --help` stays fast.
    from denoisekit.engine.interop import import_diffusers

    run = import_diffusers(args.folder, args.out, overwrite=args.overwrite)
    count = sum(p.numel() for p in run.model.parameters())
    if run.recipe.trains_autoencoder:
        print(
            f"imported {args.folder} (autoencoder {run.recipe.autoencoder.type}, {count:,} "
            f"parameters) into {args.out}"
        )
        return 0
    print(
        f"imported {args.folder} ({run.recipe.backbone.type}, {count:,} parameters, "
        f"{run.recipe.schedule.type} schedule, {run.loss.prediction_type} prediction) "
        f"into {args.out}"
    )
    return 0


def export_command(args: argparse.Namespace) -> int:
    # torch-importing engine module: lazy for the reason given in `import_command`.
    from denoisekit.engine.interop import export_diffusers
    from denoisekit.engine.run_folder import open_run

    stored = open_run(args.run, trust_plugins=args.trust_plugins)
    files = export_diffusers(stored, args.out, overwrite=args.overwrite)
    names = ", ".join(f.relative_to(args.out).as_posix() for f in files)
    print(f"exported {args.run} to {args.out}: {names}")
    return 0
