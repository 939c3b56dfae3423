"""The ``denoisekit`` command line.

User errors (:class:`denoisekit.errors.DenoisekitError`) print one line on stderr and exit
with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import attrs

from denoisekit.contracts import Metric, optional
from denoisekit.errors import DenoisekitError
from denoisekit.host.suggest import did_you_mean

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: what is wrong and which ``--help`` to read."""

    def error(self, message: str) -> NoReturn:
        match = re.search(r"invalid choice: '([^']*)'(?= \(choose from (.*)\)$)", message)
        if match:
            hint = did_you_mean(match.group(1), re.findall(r"'([^']*)'", match.group(2)))
            message = message[: match.end()] + hint + message[match.end() :]
        self.exit(EXIT_USAGE, f"denoisekit: error: {message} (see {self.prog} --help)\n")


class _CommandParser(_Parser):
    """A sub-command's parser: it rejects arguments it does not know itself, so the error
    names the sub-command, and it accepts ``--debug`` after the command too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def _add_recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", type=Path, help="the recipe TOML file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a recipe key (VALUE in TOML syntax), e.g. --set sampler.steps=20",
    )


def _add_trust_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-plugins",
        action="store_true",
        help="import the plugins the run's stored recipe names from the run folder or the "
        "working directory (runs their code; without it only installed plugins load)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = _Parser(
        prog="denoisekit", description="Modular denoising diffusion models in PyTorch."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser
    )

    p = sub.add_parser("train", help="train a recipe; leaves runs/<name>/")
    _add_recipe_args(p)
    p.add_argument("--out", type=Path, help="the run folder (default: runs/<recipe name>)")
    p.add_argument(
        "--resume",
        nargs="?",
        const="last",
        metavar="CHECKPOINT",
        help="resume from a checkpoint (default: the run folder's checkpoints/last.pt)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in the folder: its recipe.toml, versions.json, "
        "metrics.jsonl, checkpoints/, tensorboard/ and samples/ are removed first (other "
        "files stay); without it training into a folder holding a run is refused",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sample", help="draw images from a trained run or checkpoint")
    p.add_argument("run", type=Path, metavar="RUN_OR_CHECKPOINT")
    p.add_argument("--sampler", help="another registered sampler (its defaults, then --set)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override the stored recipe, e.g. --set sampler.steps=20",
    )
    p.add_argument("-n", "--num", type=int, default=64, help="number of images (default 64)")
    p.add_argument("--seed", type=int, default=0, help="image i is seeded from (seed, i)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("samples.npz"), help="the .npz to write")
    p.add_argument("--grid", type=Path, help="also write a PNG grid")
    p.add_argument("--trajectory", type=Path, help="also write a GIF of the x0 estimates")
    p.add_argument(
        "--overwrite", action="store_true", help="replace existing --out/--grid/--trajectory files"
    )
    p.add_argument("--device", help="run on this device instead of the recipe's")
    _add_trust_arg(p)
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("compare", help="run variants of recipes side by side in TensorBoard")
    p.add_argument("recipes", type=Path, nargs="*", metavar="RECIPE")
    p.add_argument(
        "--run",
        type=Path,
        metavar="RUN_OR_CHECKPOINT",
        help="reuse this trained run for every variant (they may vary only sampling options)",
    )
    p.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="KEY.PATH=V1,V2,...",
        help="a key and its values (TOML syntax); variants are the product of all --vary",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override every variant's recipe",
    )
    p.add_argument("--out", type=Path, default=Path("runs/compare"), help="the log directory")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier comparison in --out (its compare.*, variants/, train/)",
    )
    _add_trust_arg(p)
    p.add_argument(
        "--metric", action="append", default=[], help="metrics to compute (fd, nll, ...)"
    )
    p.add_argument("-n", "--num", type=int, default=64, help="images sampled per variant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--dry-run", action="store_true", help="list the variants and stop")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser(
        "eval", help="compute metrics (nll, fd, sample-time, ...) of a run or a sample file"
    )
    p.add_argument("run", type=Path, nargs="?", metavar="RUN_OR_CHECKPOINT")
    p.add_argument(
        "--metric",
        dest="metrics",
        action="append",
        default=[],
        metavar="NAME",
        help="a [metrics.NAME] table of the recipe or a registered metric (repeatable; "
        "default: the recipe's [metrics.*] tables)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override the stored recipe, e.g. --set metrics.fd.features=digits",
    )
    p.add_argument("--sampler", help="sample with another registered sampler")
    p.add_argument("-n", "--num", type=int, default=1000, help="samples to draw (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="image i is seeded from (seed, i)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", help="run on this device instead of the recipe's")
    p.add_argument("--samples", type=Path, help="score this .npz (arr_0 uint8 N×H×W×C)")
    p.add_argument(
        "--reference",
        help="with --samples: the reference data, as a recipe, run folder, checkpoint or "
        "data type name (digits)",
    )
    p.add_argument("--no-log", action="store_true", help="do not append to metrics.jsonl")
    _add_trust_arg(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("plugins", help="list every component with its provider and options")
    p.add_argument("kind", nargs="?", help="only this kind (backbone, sampler, ...)")
    p.add_argument("--recipe", type=Path, help="also load the plugins this recipe names")
    p.set_defaults(func=_cmd_plugins)

    p = sub.add_parser("recipe", help="validate or print a recipe")
    rsub = p.add_subparsers(dest="recipe_command", required=True, metavar="ACTION")
    check = rsub.add_parser("check", help="validate a recipe")
    _add_recipe_args(check)
    check.set_defaults(func=_cmd_recipe_check)
    show = rsub.add_parser("show", help="print the fully resolved recipe as TOML")
    _add_recipe_args(show)
    show.set_defaults(func=_cmd_recipe_show)

    return parser


def _version() -> str:
    from denoisekit import __version__

    return __version__


# --------------------------------------------------------------------------- commands


def _cmd_train(args: argparse.Namespace) -> int:
    from denoisekit.engine import distributed
    from denoisekit.engine.outputs import RUN_OUTPUTS, check_output_folder
    from denoisekit.host.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if args.resume is not None and args.overwrite:
        raise DenoisekitError(
            "--resume continues the run in the folder, --overwrite replaces it: pass one"
        )
    if args.resume is None:  # every rank checks before any rank writes
        check_output_folder(
            _train_folder(args, recipe),
            RUN_OUTPUTS,
            overwrite=args.overwrite,
            what="a run",
            fix="continue it with --resume, ",
        )
    # Under torchrun every rank runs this (DDP); outside it the session does nothing.
    with distributed.session(recipe.train.device) as dist:
        return _train(args, recipe, dist)


def _train_folder(args: argparse.Namespace, recipe: Any) -> Path:
    return args.out if args.out is not None else Path("runs") / recipe.name


def _train(args: argparse.Namespace, recipe: Any, dist: Any) -> int:
    from denoisekit.engine import distributed
    from denoisekit.engine.outputs import RUN_OUTPUTS, clear_outputs
    from denoisekit.engine.training import TrainingInterrupted, build_run, resume_from, train
    from denoisekit.errors import CheckpointError

    out_dir = _train_folder(args, recipe)
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


def _cmd_sample(args: argparse.Namespace) -> int:
    from denoisekit.engine import distributed

    if args.num <= 0 or args.batch_size <= 0:
        raise DenoisekitError("-n and --batch-size must be positive")
    from denoisekit.engine.outputs import check_output_files

    outputs = [("--out", args.out), ("--grid", args.grid), ("--trajectory", args.trajectory)]
    check_output_files(outputs, overwrite=args.overwrite)
    # Under torchrun each rank draws a share of the images; rank 0 writes the files.
    with distributed.session(args.device or "auto") as dist:
        return _sample(args, dist)


def _sample(args: argparse.Namespace, dist: Any) -> int:
    from tqdm import tqdm

    from denoisekit.engine import distributed
    from denoisekit.engine.sampling import (
        load_trained,
        sample_images,
        save_grid,
        save_npz,
        save_trajectory,
    )

    overrides = list(args.overrides)
    if args.sampler:
        overrides.insert(0, f"sampler.type={args.sampler}")
    run = load_trained(
        args.run,
        overrides=overrides,
        device=args.device,
        dist=dist,
        trust_plugins=args.trust_plugins,
    )
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
        save_grid(args.grid, images[: min(args.num, 256)])
        print(f"wrote {args.grid}")
    if args.trajectory:
        save_trajectory(args.trajectory, [*frames, images[:16]])
        print(f"wrote {args.trajectory}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from denoisekit.engine.compare import plan, run_compare, training_groups
    from denoisekit.engine.outputs import COMPARE_OUTPUTS, check_output_folder, clear_outputs

    if bool(args.recipes) == (args.run is not None):
        raise DenoisekitError("compare takes recipe files or --run RUN_OR_CHECKPOINT (one of)")
    if not args.dry_run:
        check_output_folder(
            args.out, COMPARE_OUTPUTS, overwrite=args.overwrite, what="a comparison", fix=""
        )
    variants = plan(
        args.recipes,
        args.vary,
        args.overrides,
        from_run=args.run,
        trust_plugins=args.trust_plugins,
    )
    groups = training_groups(variants)
    if args.dry_run:
        trainings = 0 if args.run is not None else len(groups)
        print(f"{len(variants)} variant(s), {trainings} training run(s):")
        for group, members in groups.items():
            print(f"  train {group}")
            for variant in members:
                print(f"    {variant.name}")
        return 0
    if args.overwrite:
        removed = clear_outputs(args.out, COMPARE_OUTPUTS)
        if removed:
            print(f"--overwrite: removed the previous {', '.join(removed)} from {args.out}")
    run_compare(
        variants,
        out_dir=args.out,
        num_samples=args.num,
        seed=args.seed,
        batch_size=args.batch_size,
        metrics=args.metric,
        from_run=args.run,
        trust_plugins=args.trust_plugins,
    )
    print(
        f"wrote {args.out / 'compare.md'}, compare.csv, compare.png; "
        f"open with: tensorboard --logdir {args.out}"
    )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from denoisekit.engine.evaluation import (
        EvalContext,
        append_results,
        build_metrics,
        evaluate,
        format_results,
        load_samples_npz,
    )
    from denoisekit.engine.reference import reference_recipe

    if args.num <= 0 or args.batch_size <= 0:
        raise DenoisekitError("-n and --batch-size must be positive")
    if (args.run is None) == (args.samples is None):
        raise DenoisekitError(
            "give a run folder or checkpoint, or --samples FILE.npz --reference REF (not both)"
        )
    if args.samples is not None:
        if args.reference is None:
            raise DenoisekitError(
                "--samples needs --reference: a recipe, run folder, checkpoint or data type name"
            )
        recipe, registry = reference_recipe(
            args.reference, args.overrides, trust_plugins=args.trust_plugins
        )
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

    from denoisekit.engine.sampling import load_trained

    overrides = list(args.overrides)
    if args.sampler:
        overrides.insert(0, f"sampler.type={args.sampler}")
    run = load_trained(
        args.run, overrides=overrides, device=args.device, trust_plugins=args.trust_plugins
    )
    names = args.metrics or list(run.recipe.metrics)
    if not names:
        known = ", ".join(run.registry.names("metric"))
        raise DenoisekitError(f"the recipe has no [metrics.*] tables: pass --metric NAME ({known})")
    metrics = build_metrics(run.recipe, run.registry, names)
    print(
        f"{args.run}: step {run.step}, sampler {run.recipe.sampler.type}, "
        f"{args.num} samples, seed {args.seed}"
    )
    from tqdm import tqdm

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
        path = append_results(run.out_dir / "metrics.jsonl", run.step, results)
        print(f"appended to {path}")
    return 0


def _cmd_recipe_check(args: argparse.Namespace) -> int:
    from denoisekit.host.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    print(f"{args.recipe}: ok ({recipe.name})")
    return 0


def _cmd_recipe_show(args: argparse.Namespace) -> int:
    from denoisekit.host.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    sys.stdout.write(recipe.to_toml())
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    from denoisekit.host.registry import load_registry

    if args.recipe is not None:
        from denoisekit.host.recipe import read_recipe_data

        data, _ = read_recipe_data(args.recipe)
        registry = load_registry(
            plugins=data.get("plugins", []), search_paths=[args.recipe.parent.resolve()]
        )
    else:
        registry = load_registry()
    print(format_plugins(registry, args.kind), end="")
    return 0


def format_plugins(registry: Any, kind: str | None = None) -> str:
    """Every component (of one kind) with its provider and options, as text."""
    from denoisekit.config import option_doc

    lines: list[str] = []
    current = None
    for entry in registry.entries(kind):
        if entry.kind != current:
            current = entry.kind
            lines.append(f"{current}:")
        spec = entry.spec
        lines.append(f"  {spec.name}  {spec.summary}")
        lines.append(f"    provided by {entry.plugin} ({entry.source})")
        for field in attrs.fields(spec.config):
            default = _default_text(field)
            head = f"    {field.name}: {_type_text(field.type)} = {default}"
            lines.append(f"{head}  {option_doc(field)}".rstrip())
    return "\n".join(lines) + ("\n" if lines else "")


def _type_text(tp: Any) -> str:
    """A field's type as written in source, whether or not attrs has resolved it yet.

    Unresolved annotations are strings (``from __future__ import annotations``);
    cattrs resolves them in place the first time it structures the class, so both
    forms must render alike (``tuple[int, ...]``, not the alias's ``__name__``).
    """
    if isinstance(tp, str):
        return tp
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _default_text(field: attrs.Attribute) -> str:
    default = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        default = default.factory()
    if default is attrs.NOTHING:
        return "(required)"
    return repr(default)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except DenoisekitError as exc:
        if args.debug:
            traceback.print_exc()
        line = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
        print(f"denoisekit: error: {line}", file=sys.stderr)  # one line, whatever the message
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("denoisekit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
