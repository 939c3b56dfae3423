"""Fixtures of the ``denoisekit.testing`` pytest plugin (``pytest -p denoisekit.testing``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from denoisekit.testing.recipes import write_recipe

__all__ = ["pm", "registry", "tiny_recipe"]


@pytest.fixture
def pm() -> Any:
    """A fresh component plugin manager with the hook specifications only.

    No built-ins, no entry points: register the plugin under test with
    ``pm.register_named(plugin, "name", "api")`` and build a registry from it with
    ``Registry.from_plugin_manager(pm)``.
    """
    from denoisekit.host.plugin_manager import get_plugin_manager

    return get_plugin_manager(builtins=False, autoload=False)


@pytest.fixture(scope="session")
def registry() -> Any:
    """The registry of the built-in plugins (no entry points: the same on every machine)."""
    from denoisekit.host.registry import load_registry

    return load_registry(autoload=False)


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> Callable[..., Path]:
    """Write tiny digits recipes into ``tmp_path``: ``tiny_recipe(overrides, name="tiny")``.

    See :func:`denoisekit.testing.write_recipe`; train one with
    :func:`denoisekit.testing.train_tiny`.
    """

    def make(overrides: Mapping[str, Any] | None = None, *, name: str = "tiny") -> Path:
        return write_recipe(tmp_path, overrides, name=name)

    return make
