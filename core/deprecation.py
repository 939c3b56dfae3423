"""Deprecations: a name a release removed keeps working for one more minor release, with a
:class:`DenoisekitDeprecationWarning` naming its replacement (the policy and the list:
docs/writing-a-plugin.md, "Compatibility", and CHANGELOG.md)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any


class DenoisekitDeprecationWarning(DeprecationWarning):
    """A deprecated name was used: it still works until the release the message names."""


def warn(old: str, new: str, *, removed_in: str = "0.3.0", stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated: ``new`` replaces it, and ``removed_in`` removes it."""
    warnings.warn(
        f"{old} is deprecated and goes in denoisekit {removed_in}: {new}",
        DenoisekitDeprecationWarning,
        stacklevel=stacklevel,
    )


def module_getattr(module: str, names: Mapping[str, tuple[Any, str]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` answering each removed name with ``(value, replacement)``:
    the value, after a warning naming the replacement."""

    def __getattr__(name: str, stacklevel: int = 3) -> Any:
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        value, replacement = names[name]
        warn(f"{module}.{name}", replacement, stacklevel=stacklevel)
        return value

    return __getattr__


def renamed_attributes(owner: str, renamed: Mapping[str, str]) -> Callable[[Any, str], Any]:
    """A class ``__getattr__`` answering each old attribute name in ``renamed`` (old → new)
    with the new attribute, after a warning."""

    def __getattr__(self: Any, name: str) -> Any:
        new = renamed.get(name)
        if new is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        warn(f"{owner}.{name}", f"use {owner}.{new}")
        return getattr(self, new)

    return __getattr__


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports of moved modules by their old paths: the old module is a copy of the new
    one's names, made with a warning. Consulted only when no module has the old path."""

    def __init__(self, moved: Mapping[str, str]) -> None:
        self.moved = dict(moved)

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        return importlib.util.spec_from_loader(name, self) if name in self.moved else None

    def create_module(self, spec: Any) -> None:
        return None  # a plain module

    def exec_module(self, module: ModuleType) -> None:
        new = self.moved[module.__name__]
        warn(f"module {module.__name__}", f"import {new}")  # (warnings skips importlib)
        names = vars(importlib.import_module(new))
        module.__dict__.update({k: v for k, v in names.items() if not k.startswith("__")})

    def install(self) -> None:
        """Add this finder to :data:`sys.meta_path`, after the others, once per process."""
        if not any(isinstance(f, MovedModules) for f in sys.meta_path):
            sys.meta_path.append(self)
