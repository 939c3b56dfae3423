"""``denoisekit sample RUN_OR_CHECKPOINT``: draw images into an ``.npz`` (and a grid, a GIF)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from denoisekit.cli.common import (
    Subparsers,
    add_class_arg,
    add_sampling_args,
    add_set_arg,
    add_trust_arg,
    check_counts,
    check_image_memory,
    class_labels_for,
    sampler_overrides,
)
from denoisekit.engine.outputs import check_output_files


def register(sub: Subparsers) -> None:
    """Add ``sample``."""
    parser = sub.add_parser("sample", help="draw images from a trained run or checkpoint")
    parser.add_argument("run", type=Path, metavar="RUN_OR_CHECKPOINT")
    add_sampling_args(parser)
    add_class_arg(parser)
    add_set_arg(parser, "override the stored recipe, e.g. --set sampler.steps=20")
    parser.add_argument("-n", "--num", type=int, default=64, help="number of images (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="image i is seeded from (seed, i)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("samples.npz"), help="the .npz to write")
    parser.add_argument("--grid", type=Path, help="also write a PNG grid")
    parser.add_argument("--trajectory", type=Path, help="also write a GIF of the x0 estimates")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing --out/--grid/--trajectory files"
    )
    parser.add_argument("--device", help="run on this device instead of the recipe's")
    add_trust_arg(parser)
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    # The engine's distributed module imports torch: imported here, not at the top, so
    # `denoisekit --help` and a rejected argument stay fast.
    from denoisekit.engine import distributed

    check_counts(args)
    outputs = [("--out", args.out), ("--grid", args.grid), ("--trajectory", args.trajectory)]
    check_output_files(outputs, overwrite=args.overwrite)
    # Under torchrun each rank draws a share of the images; rank 0 writes the files.
    with distributed.session(args.device or "auto") as dist:
        return _sample(args, dist)


def _sample(args: argparse.Namespace, dist: Any) -> int:
    # torch-importing modules: lazy for the reason given in `command`.
    import torch
    from tqdm import tqdm

    from denoisekit.engine import distributed
    from denoisekit.engine.build import load_trained
    from denoisekit.engine.run_folder import open_run
    from denoisekit.engine.sampling import (
        sample_images,
        save_grid,
        save_npz,
        save_trajectory,
    )

    run = load_trained(
        open_run(args.run, trust_plugins=args.trust_plugins),
        overrides=sampler_overrides(args),
        device=args.device,
        dist=dist,
    )
    check_image_memory(args.num, args.batch_size, run.image_shape)
    classes = class_labels_for(args.classes, run.num_classes, args.num)
    labels = torch.tensor(classes) if classes is not None else None
    frames: list[Any] = []
    first_batch = [True]

    def record(info: dict[str, Any]) -> None:
        if first_batch[0]:
            frames.append(info["x0"][:16].float().cpu())

    lo, hi = distributed.shard_range(args.num, dist)  # this rank's images
    show = sys.stderr.isatty() and dist.is_main
    with tqdm(total=hi - lo, unit="img", disable=not show) as bar:

        def progress(count: int) -> None:
            first_batch[0] = False
            bar.update(count)

        images, labels = sample_images(
            run,
            args.num,
            seed=args.seed,
            batch_size=args.batch_size,
            labels=labels,
            callback=record if args.trajectory else None,
            progress=progress,
            dist=dist,
        )
    if not dist.is_main:
        return 0
    save_npz(args.out, images, labels)
    print(
        f"wrote {args.num} images to {args.out} "
        f"(step {run.step}, sampler {run.recipe.sampler.type})"
    )
    if args.grid:
        distinct = len(set(classes)) if classes is not None else 0
        columns = distinct if distinct > 1 else None  # one column per class of a list
        save_grid(args.grid, images[: min(args.num, 256)], columns)
        print(f"wrote {args.grid}")
    if args.trajectory:
        save_trajectory(args.trajectory, [*frames, images[:16]])
        print(f"wrote {args.trajectory}")
    return 0
