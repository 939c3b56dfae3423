"""The ``denoisekit`` command line: the parser of every command, and :func:`main`.

One module per command (:mod:`~denoisekit.cli.train`, ``sample``, ``edit``, ``compare``, ``eval``,
``plugins``, ``recipe``, ``data``; ``interop``: ``import-diffusers`` and ``export-diffusers``), each
with ``register(subparsers)``, which adds its parser and sets its handler as ``func``;
:mod:`~denoisekit.cli.common` holds what they share. User errors
(:class:`denoisekit.errors.DenoisekitError`) print one line on stderr and exit with
status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence

from denoisekit import PLUGIN_API_VERSION, __version__
from denoisekit.cli import compare, data, edit, interop, plugins, recipe, sample, train
from denoisekit.cli import eval as evaluate  # the `eval` command's module, not the builtin
from denoisekit.cli.common import EXIT_USAGE, CommandParser, Parser
from denoisekit.errors import DenoisekitError

#: The command modules, in the order ``denoisekit --help`` lists them.
COMMANDS = (train, sample, edit, compare, evaluate, interop, data, plugins, recipe)
#: What ``denoisekit --version`` prints: the package's and the plugin API's versions.
VERSION_TEXT = f"denoisekit {__version__} (plugin API {'.'.join(map(str, PLUGIN_API_VERSION))})"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = Parser(prog="denoisekit", description="Modular denoising diffusion models in PyTorch.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    parser.add_argument("--version", action="version", version=VERSION_TEXT)
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=CommandParser
    )
    for command in COMMANDS:
        command.register(sub)
    return parser


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
