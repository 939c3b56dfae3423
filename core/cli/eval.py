"""``denoisekit eval RUN | --samples FILE --reference REF``: compute metrics."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from denoisekit.cli.common import (
    Subparsers,
    add_set_arg,
    add_trust_arg,
    check_counts,
    check_image_memory,
    sampler_overrides,
)
from denoisekit.contracts import Metric, optional
from denoisekit.errors import DenoisekitError


def register(sub: Subparsers) -> None:
    """Add ``eval``."""
    parser = sub.add_parser(
        "eval", help="compute metrics (nll, fd, sample-time, ...) of a run or a sample file"
    )
    parser.add_argument("run", type=Path, nargs="?", metavar="RUN_OR_CHECKPOINT")
    parser.add_argument(
        "--metric",
        dest="metrics",
        action="append",
        default=[],
        metavar="NAME",
        help="a [metrics.NAME] table of the recipe or a registered metric (repeatable; "
        "default: the recipe's [metrics.*] tables)",
    )
    add_set_arg(parser, "override the stored recipe, e.g. --set metrics.fd.features=digits")
    parser.add_argument("--sampler", help="sample with another registered sampler")
    parser.add_argument(
        "-n", "--num", type=int, default=1000, help="samples to draw (default 1000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="image i is seeded from (seed, i)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", help="run on this device instead of the recipe's")
    parser.add_argument("--samples", type=Path, help="score this .npz (arr_0 uint8 N×H×W×C)")
    parser.add_argument(
        "--reference",
        help="with --samples: the reference data, as a recipe, run folder, checkpoint or "
        "data type name (digits)",
    )
    parser.add_argument("--no-log", action="store_true", help="do not append to metrics")
    add_trust_arg(parser)
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    check_counts(args)
    if (args.run is None) == (args.samples is None):
        raise DenoisekitError(
            "give a run folder or checkpoint, or --samples FILE.npz --reference REF (not both)"
        )
    if args.samples is not None:
        return _score_samples(args)
    return _evaluate_run(args)


def _score_samples(args: argparse.Namespace) -> int:
    """``--samples FILE --reference REF``: metrics of images drawn elsewhere."""
    # The engine's evaluation module imports torch (a second or more): imported here, not
    # at the top, so `denoisekit --help` and a rejected argument stay fast.
    from denoisekit.engine.evaluation import (
        EvalContext,
        build_metrics,
        evaluate,
        format_results,
        load_samples_npz,
    )
    from denoisekit.engine.reference import reference_recipe

    if args.reference is None:
        raise DenoisekitError(
            "--samples needs --reference: a recipe, run folder, checkpoint or data type name"
        )
    from denoisekit.engine.run_folder import open_run

    reference = args.reference
    path = Path(reference)
    if path.exists() and not (path.is_file() and path.suffix == ".toml"):  # a stored run
        reference = open_run(reference, trust_plugins=args.trust_plugins)
    recipe, registry = reference_recipe(reference, args.overrides)
    sample_set = load_samples_npz(args.samples)
    if args.metrics:
        metrics = build_metrics(recipe, registry, args.metrics)
    else:  # the recipe's metrics that need no model (not nll, sample-time), else fd
        metrics = {
            name: metric
            for name, metric in build_metrics(recipe, registry).items()
            if not optional(metric, Metric, "requires_model")
        } or build_metrics(recipe, registry, ["fd"])
    context = EvalContext(
        recipe=recipe,
        registry=registry,
        sample_set=sample_set,
        num_samples=sample_set.num_images,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    print(f"{args.samples}: {sample_set.num_images} images; reference: {args.reference}")
    sys.stdout.write(format_results(evaluate(context, metrics)))
    return 0


def _evaluate_run(args: argparse.Namespace) -> int:
    """``RUN_OR_CHECKPOINT``: draw ``-n`` images from a trained model and score them."""
    # torch-importing modules: lazy for the reason given in `_score_samples`.
    from tqdm import tqdm

    from denoisekit.engine.build import load_trained
    from denoisekit.engine.evaluation import (
        EvalContext,
        append_results,
        build_metrics,
        evaluate,
        format_results,
    )
    from denoisekit.engine.run_folder import open_run

    run = load_trained(
        open_run(args.run, trust_plugins=args.trust_plugins),
        overrides=sampler_overrides(args),
        device=args.device,
    )
    check_image_memory(args.num, args.batch_size, run.image_shape)
    names = args.metrics or list(run.recipe.metrics)
    if not names:
        known = ", ".join(run.registry.names("metric"))
        raise DenoisekitError(f"the recipe has no [metrics.*] tables: pass --metric NAME ({known})")
    metrics = build_metrics(run.recipe, run.registry, names)
    print(
        f"{args.run}: step {run.step}, sampler {run.recipe.sampler.type}, "
        f"{args.num} samples, seed {args.seed}"
    )
    with tqdm(total=args.num, unit="img", disable=not sys.stderr.isatty()) as bar:
        context = EvalContext(
            run=run,
            seed=args.seed,
            num_samples=args.num,
            batch_size=args.batch_size,
            progress=bar.update,
        )
        results = evaluate(context, metrics)
    sys.stdout.write(format_results(results))
    if not args.no_log:
        path = append_results(run.paths.metrics, run.step, results)
        print(f"appended to {path}")
    return 0
