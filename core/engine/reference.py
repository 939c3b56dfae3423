"""The reference data of an evaluation: the held-out split of a recipe's data, the recipe
naming it (from a recipe file, a run, or a data type name) and a cache key for it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from denoisekit.engine.run_folder import StoredRun, open_run
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
    spec: str | Path | StoredRun, overrides: Sequence[str] = ()
) -> tuple[Any, Any]:
    """A recipe (and its registry) naming reference data, from a recipe file, a run
    (opened with :func:`~denoisekit.engine.run_folder.open_run`; a path to one is opened
    without trusting its plugins), or a data type name (``digits``); ``overrides`` apply
    as ``--set``.

    Returns:
        ``(recipe, registry)``.
    """
    from denoisekit.engine.components import load_components
    from denoisekit.host.recipe import Origins, apply_overrides, load_recipe, recipe_from_data
    from denoisekit.host.registry import load_registry

    path = Path(spec.folder if isinstance(spec, StoredRun) else spec)
    if not isinstance(spec, StoredRun) and path.is_file() and path.suffix == ".toml":
        recipe = load_recipe(path, overrides)
        return recipe, load_components(recipe)
    if isinstance(spec, StoredRun) or path.exists():
        stored = spec if isinstance(spec, StoredRun) else open_run(path)
        try:
            return stored.recipe(overrides, check=False), stored.registry  # its data alone
        except RecipeError as exc:
            raise RecipeError(f"--reference {path}: {exc}") from exc
    text = str(spec)
    if not text or "/" in text or text.endswith((".toml", ".pt", ".npz")):
        raise DenoisekitError(
            f"--reference {text!r}: no such recipe, run folder or checkpoint (or give a "
            "data type name, e.g. --reference digits)"
        )
    origins = Origins()
    data = apply_overrides({"name": "reference", "data": {"type": text}}, overrides, origins)
    registry = load_registry(plugins=data.get("plugins", []))
    try:
        # Only its data is used: no cross-table checks (a data type name has no backbone).
        recipe = recipe_from_data(data, registry, origins=origins, check=False)
    except RecipeError as exc:
        raise RecipeError(f"--reference {spec}: {exc}") from exc
    return recipe, registry
