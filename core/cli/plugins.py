"""``denoisekit plugins [KIND]``: every component with its provider and options.

:func:`type_text` and :func:`default_text` render an option's type and default; the
generated recipe reference (:mod:`denoisekit.cli.docs`) uses them too, so both read alike.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import attrs

from denoisekit.cli.common import Subparsers
from denoisekit.config import DOC_KEY
from denoisekit.host.recipe import read_recipe_data
from denoisekit.host.registry import Registry, load_registry


def register(sub: Subparsers) -> None:
    """Add ``plugins``."""
    parser = sub.add_parser("plugins", help="list every component with its provider and options")
    parser.add_argument("kind", nargs="?", help="only this kind (backbone, sampler, ...)")
    parser.add_argument("--recipe", type=Path, help="also load the plugins this recipe names")
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    if args.recipe is not None:
        data, _ = read_recipe_data(args.recipe)
        registry = load_registry(
            plugins=data.get("plugins", []), search_paths=[args.recipe.parent.resolve()]
        )
    else:
        registry = load_registry()
    print(format_plugins(registry, args.kind), end="")
    return 0


def format_plugins(registry: Registry, kind: str | None = None) -> str:
    """Every component (of one kind) with its provider and options, as text."""
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
            head = f"    {field.name}: {type_text(field.type)} = {default_text(field)}"
            lines.append(f"{head}  {option_doc(field)}".rstrip())
    return "\n".join(lines) + ("\n" if lines else "")


def option_doc(field: attrs.Attribute) -> str:
    """The one-line doc of a config field (declared with :func:`denoisekit.option`; '' if none)."""
    return field.metadata.get(DOC_KEY, "")


def type_text(tp: Any) -> str:
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


def default_text(field: attrs.Attribute) -> str:
    """A field's default as ``repr`` (a factory's product), or ``(required)``."""
    default = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        default = default.factory()
    if default is attrs.NOTHING:
        return "(required)"
    return repr(default)
