"""The reference data of an evaluation: the held-out split of a recipe's data, the recipe
naming it (from a recipe file, a run, or a data type name) and a cache key for it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from denoisekit.errors import DenoisekitError, RecipeError

__all__ = ["build_reference_data", "reference_key", "reference_recipe"]


def build_reference_data(recipe: Any, registry: Any) -> Any:
    """The recipe's data component built with ``train=False`` (its held-out split)."""
    choice = recipe.data
    return registry.build("data", choice.type, choice.config, root=recipe.root, train=False)


def reference_key(recipe: Any) -> str:
    """A cache key naming the held-out data of a recipe: ``<type>-<hash of its options>``."""
    choice = recipe.data
    options = attrs.asdict(choice.config) if attrs.has(type(choice.config)) else {}
    text = json.dumps(
        {"type": choice.type, "options": options, "root": str(recipe.root)},
        sort_keys=True,
        default=str,
    )
    return f"{choice.type}-heldout-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def reference_recipe(
    spec: str | Path, overrides: Sequence[str] = (), *, trust_plugins: bool = False
) -> tuple[Any, Any]:
    """A recipe (and its registry) naming reference data, from a recipe file, a run folder
    or checkpoint, or a data type name (``digits``); ``overrides`` apply as ``--set``.
    A run's stored recipe imports its plugins as
    :func:`denoisekit.engine.sampling.stored_registry` says (``trust_plugins``).

    Returns:
        ``(recipe, registry)``.
    """
    from denoisekit.engine.components import load_components
    from denoisekit.host.recipe import Origins, apply_overrides, load_recipe, recipe_from_data
    from denoisekit.host.registry import load_registry

    path = Path(spec)
    if path.is_file() and path.suffix == ".toml":
        recipe = load_recipe(path, overrides)
        return recipe, load_components(recipe)
    origins = Origins()
    if path.exists():
        from denoisekit.engine.sampling import find_checkpoint, stored_recipe, stored_registry

        checkpoint = find_checkpoint(path)
        data = stored_recipe(checkpoint)
        source: Path | None = checkpoint
    else:
        text = str(spec)
        if not text or "/" in text or text.endswith((".toml", ".pt", ".npz")):
            raise DenoisekitError(
                f"--reference {text!r}: no such recipe, run folder or checkpoint (or give a "
                "data type name, e.g. --reference digits)"
            )
        data = {"name": "reference", "data": {"type": text}}
        source = None
    data = apply_overrides(data, overrides, origins)
    if source is not None:
        registry = stored_registry(source, data, trust_plugins=trust_plugins)
    else:
        registry = load_registry(plugins=data.get("plugins", []))
    try:
        # Only its data is used: no cross-table checks (a data type name has no backbone).
        recipe = recipe_from_data(data, registry, source=source, origins=origins, check=False)
    except RecipeError as exc:
        raise RecipeError(f"--reference {spec}: {exc}") from exc
    return recipe, registry
