"""The registry a recipe's components are built from: the one place a run loads plugins."""

from __future__ import annotations

from denoisekit.host.recipe import Recipe
from denoisekit.host.registry import Registry, load_registry


def load_components(recipe: Recipe) -> Registry:
    """The registry of the built-in plugins, entry points and the recipe's ``plugins``
    (looked for in the recipe file's folder first)."""
    search = [recipe.path.parent.resolve()] if recipe.path is not None else []
    return load_registry(plugins=recipe.plugins, search_paths=search)
