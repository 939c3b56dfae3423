"""``denoisekit.build``: one registered component by kind and name, outside any recipe."""

from __future__ import annotations

from typing import Any

from denoisekit.contracts import KIND
from denoisekit.errors import RecipeError, RegistryError
from denoisekit.host.convert import flatten_errors, structure_config
from denoisekit.host.registry import Registry, load_registry
from denoisekit.host.suggest import did_you_mean


def build(kind: str, name: str, /, *, registry: Registry | None = None, **options: Any) -> Any:
    """Build the ``kind`` component registered as ``name``, e.g.
    ``denoisekit.build("sampler", "ddim", steps=20)``.

    Args:
        kind / name: what a recipe's ``[kind]`` table says with ``type = "name"``.
        registry: the components to choose from (default: the built-in plugins and the
            installed ones, :func:`~denoisekit.host.registry.load_registry`).
        options: the component's options, checked as a recipe table's are, and the
            build context of its kind (``schedule=`` for a loss, ``params=`` and
            ``device=`` for an optimizer, ...: :data:`denoisekit.BUILD_CONTEXT`).

    Raises:
        RegistryError: an unknown kind or name, or build context missing.
        RecipeError: an option the component does not have, or a bad value.
    """
    if kind not in KIND:
        raise RegistryError(
            f"unknown component kind {kind!r}{did_you_mean(kind, KIND)}; the kinds are "
            f"{', '.join(KIND)}"
        )
    registry = registry if registry is not None else load_registry()
    entry = registry.get(kind, name)
    wanted = KIND[kind].context
    missing = [key for key in wanted if key not in options]
    if missing:
        raise RegistryError(
            f"building a {kind} needs {', '.join(f'{k}=...' for k in missing)} (its build "
            "context) besides its options"
        )
    context = {key: options.pop(key) for key in wanted}
    try:
        config = structure_config(entry.spec.config, options)
    except Exception as exc:
        errors = flatten_errors(exc, kind, entry.spec.config)
        raise RecipeError(
            f"{kind} {name!r}: " + "; ".join(f"{path}: {message}" for path, message in errors)
        ) from None
    return registry.build(kind, name, config, **context)
