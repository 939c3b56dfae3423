"""What the command modules share: the one-line-error parsers and the common arguments."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any, NoReturn

from denoisekit.errors import DenoisekitError
from denoisekit.host.suggest import did_you_mean

#: The exit status of a user error (a bad recipe, a bad argument): one line, no traceback.
EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: what is wrong and which ``--help`` to read."""

    def error(self, message: str) -> NoReturn:
        match = re.search(r"invalid choice: '([^']*)'(?= \(choose from (.*)\)$)", message)
        if match:
            hint = did_you_mean(match.group(1), re.findall(r"'([^']*)'", match.group(2)))
            message = message[: match.end()] + hint + message[match.end() :]
        self.exit(EXIT_USAGE, f"denoisekit: error: {message} (see {self.prog} --help)\n")


class CommandParser(Parser):
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


def finite_float(text: str) -> float:
    """An argparse ``type``: a finite number (``nan`` and ``inf`` parse as floats but mean
    nothing for a scale or a strength)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number: {text!r}")
    return value


#: The ``add_subparsers`` result each command module registers its parser into.
Subparsers = Any


def add_set_arg(parser: argparse.ArgumentParser, text: str) -> None:
    """``--set KEY.PATH=VALUE`` (repeatable), collected in ``args.overrides``."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help=text,
    )


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    """The recipe file and ``--set`` overrides of it."""
    parser.add_argument("recipe", type=Path, help="the recipe TOML file")
    add_set_arg(parser, "override a recipe key (VALUE in TOML syntax), e.g. --set sampler.steps=20")


def add_trust_arg(parser: argparse.ArgumentParser) -> None:
    """``--trust-plugins``, for commands that open a run folder's stored recipe."""
    parser.add_argument(
        "--trust-plugins",
        action="store_true",
        help="import the plugins the run's stored recipe names from the run folder or the "
        "working directory (runs their code; without it only installed plugins load)",
    )


def check_counts(args: argparse.Namespace) -> None:
    """``-n`` and ``--batch-size`` of the commands that draw images must be positive."""
    if args.num <= 0 or args.batch_size <= 0:
        raise DenoisekitError("-n and --batch-size must be positive")


def check_image_memory(n: int, batch_size: int, image_shape: tuple[int, ...]) -> None:
    """``-n`` images are held (float32) until written and scored, a batch is in flight with
    at least two more copies (``x_t`` and ``x0``): refuse counts beyond the memory limit
    before any image is drawn."""
    from denoisekit.config import over_memory

    pixels = math.prod(image_shape)
    held = over_memory(
        4 * pixels * n, f"-n {n}: holding {n} images of {'×'.join(map(str, image_shape))} (float32)"
    )
    if held is not None:
        raise DenoisekitError(f"{held}; draw fewer images")
    batch = min(n, batch_size)
    problem = over_memory(
        4 * pixels * (n + 2 * batch), f"--batch-size {batch_size}: sampling {batch} images at once"
    )
    if problem is not None:
        raise DenoisekitError(f"{problem}; use a smaller --batch-size")


def sampler_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` overrides, preceded by ``--sampler NAME`` as ``sampler.type=NAME`` and
    ``--guidance W`` as ``guidance.scale=W``."""
    overrides = list(args.overrides)
    if getattr(args, "guidance", None) is not None:
        overrides.insert(0, f"guidance.scale={args.guidance}")
    if args.sampler:
        overrides.insert(0, f"sampler.type={args.sampler}")
    return overrides


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """``--sampler NAME`` and ``--guidance W`` (shorthands for ``--set``)."""
    parser.add_argument("--sampler", help="another registered sampler (its defaults, then --set)")
    parser.add_argument(
        "--guidance",
        type=finite_float,
        metavar="W",
        help="classifier-free guidance scale (--set guidance.scale=W): 0 unconditional, "
        "1 conditional, above 1 guided",
    )


def add_class_arg(parser: argparse.ArgumentParser) -> None:
    """``--class K``, a list ``K,L,...`` or ``all`` (class-conditional models)."""
    parser.add_argument(
        "--class",
        dest="classes",
        metavar="K|K,L,...|all",
        help="draw these classes (a list cycles; 'all' gives one grid column per class)",
    )


def class_labels_for(text: str | None, num_classes: int | None, n: int) -> list[int] | None:
    """The label of each of ``n`` images for ``--class`` (None: the model's default)."""
    if text is None:
        return None
    if not num_classes:
        raise DenoisekitError(
            f"--class {text}: this model is unconditional (backbone.num_classes is not set); "
            "train with classes to draw chosen ones"
        )
    if text.strip() == "all":
        classes = list(range(num_classes))
    else:
        try:
            classes = [int(part) for part in text.split(",")]
        except ValueError:
            raise DenoisekitError(
                f"--class {text}: give a class number, a comma-separated list or 'all'"
            ) from None
    bad = [k for k in classes if not 0 <= k < num_classes]
    if bad:
        raise DenoisekitError(
            f"--class {text}: class {bad[0]} is out of range; this model has classes "
            f"0 to {num_classes - 1}"
        )
    return [classes[i % len(classes)] for i in range(n)]
