"""What the command modules share: the one-line-error parsers and the common arguments."""

from __future__ import annotations

import argparse
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


def sampler_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` overrides, preceded by ``--sampler NAME`` as ``sampler.type=NAME``."""
    overrides = list(args.overrides)
    if args.sampler:
        overrides.insert(0, f"sampler.type={args.sampler}")
    return overrides
