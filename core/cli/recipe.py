"""``denoisekit recipe check|show RECIPE``: validate a recipe, or print it fully resolved."""

from __future__ import annotations

import argparse
import sys

from denoisekit.cli.common import Subparsers, add_recipe_args
from denoisekit.engine.components import load_components
from denoisekit.engine.latent_space import check_latent
from denoisekit.host.recipe import load_recipe


def register(sub: Subparsers) -> None:
    """Add ``recipe`` and its actions ``check`` and ``show``."""
    parser = sub.add_parser("recipe", help="validate or print a recipe")
    actions = parser.add_subparsers(dest="recipe_command", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="validate a recipe")
    add_recipe_args(check)
    check.set_defaults(func=check_command)
    show = actions.add_parser("show", help="print the fully resolved recipe as TOML")
    add_recipe_args(show)
    show.set_defaults(func=show_command)


def check_command(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    if recipe.latent is not None:  # the autoencoder loaded, its latents against the backbone
        check_latent(recipe, load_components(recipe))
    print(f"{args.recipe}: ok ({recipe.name})")
    return 0


def show_command(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    sys.stdout.write(recipe.to_toml())
    return 0
