"""``denoisekit edit RUN --input IMAGES``: img2img (``--strength``) and inpainting (``--mask``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from denoisekit.cli.common import (
    Subparsers,
    add_class_arg,
    add_sampling_args,
    add_set_arg,
    add_trust_arg,
    class_labels_for,
    finite_float,
    sampler_overrides,
)
from denoisekit.engine.outputs import check_output_files
from denoisekit.errors import DenoisekitError

#: Images shown in the --grid picture (one column each).
GRID_IMAGES = 16


def register(sub: Subparsers) -> None:
    """Add ``edit``."""
    parser = sub.add_parser(
        "edit", help="img2img (--strength) or inpainting (--mask) with a trained run"
    )
    parser.add_argument("run", type=Path, metavar="RUN_OR_CHECKPOINT")
    parser.add_argument(
        "--input",
        type=Path,
        action="append",
        required=True,
        metavar="IMAGES",
        help="image files, a folder of them, or an .npz (arr_0 uint8 N×H×W×C); repeatable",
    )
    parser.add_argument(
        "--mask",
        type=Path,
        help="inpainting mask: an image (white = regenerate, black = keep) or an .npy/.npz "
        "of 0/1, one for all inputs or one per input",
    )
    parser.add_argument(
        "--strength",
        type=finite_float,
        help="img2img: noise the input this far (0 = return it, 1 = plain sampling); "
        "default 1 with --mask",
    )
    parser.add_argument(
        "--repaint",
        nargs=3,
        type=int,
        metavar=("STEPS", "JUMP", "RESAMPLE"),
        help="inpaint on RePaint's time-travel schedule (e.g. 100 10 5) instead of the "
        "sampler: RePaint (with --inpaint replacement, the default here), DDNM's time travel "
        "with --inpaint ddnm",
    )
    parser.add_argument(
        "--inpaint",
        metavar="METHOD",
        help="how the kept pixels steer the rest: replacement, ddnm, pigdm, mmps, dps, or "
        "model (a run trained with [inpainting]; its default, with or without --repaint) "
        "(default otherwise: mmps, the best measured, see docs/steering.md; replacement "
        "with --repaint)",
    )
    parser.add_argument(
        "--inpaint-scale",
        type=finite_float,
        metavar="W",
        help="how strongly the kept pixels steer: dps's step zeta' (default 1, the paper's), "
        "model's guidance scale on them (default: the run's [inpainting] guidance; 1 = none, "
        "else 2 forwards a step)",
    )
    parser.add_argument(
        "--cg-iterations",
        type=int,
        metavar="N",
        help="conjugate-gradient steps of --inpaint mmps (one backward pass each; default 2)",
    )
    add_sampling_args(parser)
    add_class_arg(parser)
    add_set_arg(parser, "override the stored recipe, e.g. --set sampler.steps=20")
    parser.add_argument(
        "--seed", type=int, default=0, help="image i's noise is seeded from (seed, i)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("edited.npz"), help="the .npz to write")
    parser.add_argument("--grid", type=Path, help="also write a PNG: inputs, mask, results")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--device", help="run on this device instead of the recipe's")
    add_trust_arg(parser)
    parser.set_defaults(func=command)


def _options(args: argparse.Namespace) -> Any:
    from denoisekit.engine.editing import EditOptions

    if args.mask is None and args.strength is None:
        raise DenoisekitError("edit: give --mask (inpainting) and/or --strength (img2img)")
    if args.repaint is not None and args.mask is None:
        raise DenoisekitError("edit: --repaint inpaints: give a --mask")
    if args.batch_size <= 0:
        raise DenoisekitError("--batch-size must be positive")
    strength = 1.0 if args.strength is None else args.strength
    # EditOptions checks the strength and --repaint (one line each) before anything loads.
    return EditOptions(
        strength=strength,
        repaint=tuple(args.repaint) if args.repaint else None,
        # unset: the run's own model on an [inpainting] run, else MMPS (RePaint with --repaint)
        method=args.inpaint,
        **({"iterations": args.cg_iterations} if args.cg_iterations is not None else {}),
        **({"scale": args.inpaint_scale} if args.inpaint_scale is not None else {}),
    )


def command(args: argparse.Namespace) -> int:
    # torch-importing engine modules are imported here, not at the top, so that
    # `denoisekit --help` and a rejected argument stay fast.
    import torch

    from denoisekit.engine.build import load_trained
    from denoisekit.engine.editing import edit_images, fit_to_timesteps, load_inputs, load_mask
    from denoisekit.engine.figures import save_labelled_rows
    from denoisekit.engine.run_folder import open_run
    from denoisekit.engine.sampling import save_npz

    options = _options(args)
    check_output_files([("--out", args.out), ("--grid", args.grid)], overwrite=args.overwrite)
    run = load_trained(
        open_run(args.run, trust_plugins=args.trust_plugins),
        overrides=sampler_overrides(args),
        device=args.device,
    )
    sampler, options, notes = fit_to_timesteps(run, options)
    for note in notes:
        print(f"note: {note}")
    images = load_inputs(args.input, run.image_shape)
    mask = load_mask(args.mask, images.shape[0], run.image_shape) if args.mask else None
    classes = class_labels_for(args.classes, run.num_classes, images.shape[0])
    labels = torch.tensor(classes) if classes is not None else None
    results = edit_images(
        run,
        images,
        mask=mask,
        options=options,
        labels=labels,
        seed=args.seed,
        batch_size=args.batch_size,
        sampler=sampler,
    )
    save_npz(args.out, results, labels)
    print(f"wrote {results.shape[0]} edited images to {args.out} (step {run.step})")
    if args.grid:
        n = min(GRID_IMAGES, images.shape[0])
        rows = [("input", images[:n])]
        if mask is not None:
            shown = mask[:n] if mask.shape[0] > 1 else mask.expand(n, -1, -1, -1)
            rows.append(("mask", (shown * 2 - 1).expand(-1, images.shape[1], -1, -1)))
        rows.append(("result", results[:n]))
        save_labelled_rows(args.grid, rows)
        print(f"wrote {args.grid}")
    return 0
