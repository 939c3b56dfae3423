"""Build the component plugin manager: built-ins, entry points, recipe plugins, API objects.

A fresh manager per call; nothing here is a module-level global. The built-in plugins are
listed by dotted module name and imported only when a manager is built, so importing the
core never imports ``denoisekit.plugins``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pluggy

from denoisekit import hookspecs
from denoisekit.errors import PluginLoadError
from denoisekit.host.suggest import did_you_mean

log = logging.getLogger(__name__)

#: Entry-point group third-party plugins publish under.
ENTRY_POINT_GROUP = "denoisekit"
#: Set to a non-empty value to skip loading entry-point plugins.
DISABLE_AUTOLOAD_ENV = "DENOISEKIT_DISABLE_PLUGIN_AUTOLOAD"
#: Set to a non-empty value to log every hook call (``logging`` at DEBUG level).
TRACE_ENV = "DENOISEKIT_TRACE_HOOKS"

#: The built-in plugins, registered as ``builtin:<last part>``.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "denoisekit.plugins.schedules.cosine",
    "denoisekit.plugins.schedules.linear",
    "denoisekit.plugins.losses.mse",
    "denoisekit.plugins.samplers.ddpm",
    "denoisekit.plugins.samplers.ddim",
    "denoisekit.plugins.samplers.dpmpp_2m",
    "denoisekit.plugins.backbones.unet",
    "denoisekit.plugins.autoencoders.kl",
    "denoisekit.plugins.optim.adam",
    "denoisekit.plugins.optim.sgd",
    "denoisekit.plugins.optim.lr_constant",
    "denoisekit.plugins.optim.lr_warmup_cosine",
    "denoisekit.plugins.data.digits",
    "denoisekit.plugins.data.image_folder",
    "denoisekit.plugins.data.shards",
    "denoisekit.plugins.data.torchvision_data",
    "denoisekit.plugins.hooks.ema",
    "denoisekit.plugins.hooks.amp",
    "denoisekit.plugins.hooks.compile",
    "denoisekit.plugins.hooks.tensorboard",
    "denoisekit.plugins.hooks.checkpoint",
    "denoisekit.plugins.hooks.progress",
    "denoisekit.plugins.hooks.nan_guard",
    "denoisekit.plugins.hooks.preview",
    "denoisekit.plugins.hooks.evaluate",
    "denoisekit.plugins.metrics.nll",
    "denoisekit.plugins.metrics.fd",
    "denoisekit.plugins.metrics.digits_quality",
    "denoisekit.plugins.metrics.class_quality",
    "denoisekit.plugins.metrics.sample_time",
)


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, remembering where each plugin came from.

    ``sources[name]`` is ``"builtin"``, ``"entry point <dist> <version>"``, ``"recipe"``
    or ``"api"``.
    """

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.sources: dict[str, str] = {}
        self.distributions: dict[str, tuple[str, str]] = {}
        self.add_hookspecs(hookspecs)

    def register_named(self, plugin: Any, name: str, source: str) -> None:
        """Register ``plugin`` as ``name``; errors name the plugin and its source."""
        try:
            self.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginLoadError(f"plugin {name!r} ({source}): {hook_problem(exc)}") from exc
        except ValueError as exc:  # already registered under this name
            raise PluginLoadError(f"plugin {name!r} ({source}): {exc}") from exc
        self.sources[name] = source

    def describe(self, name: str) -> str:
        """Where the plugin registered as ``name`` came from."""
        return self.sources.get(name, "api")


def get_plugin_manager(
    *,
    plugins: Sequence[str | Any] = (),
    search_paths: Iterable[Path | str] = (),
    autoload: bool | None = None,
    builtins: bool = True,
    disabled: Iterable[str] = (),
) -> PluginManager:
    """Build a fresh plugin manager.

    Args:
        plugins: module names (as a recipe's ``plugins = [...]`` gives them) or plugin
            objects (modules, instances) passed through the Python API.
        search_paths: folders where recipe plugin modules are looked for first (the
            recipe's folder).
        autoload: load ``denoisekit`` entry points; defaults to true unless
            ``DENOISEKIT_DISABLE_PLUGIN_AUTOLOAD`` is set.
        builtins: register the built-in plugins.
        disabled: plugin names (``builtin:ddim``, an entry-point name) to block.

    Raises:
        PluginLoadError: a plugin fails to import, or implements an unknown hook or an
            argument its hook does not have.
    """
    pm = PluginManager()
    for name in disabled:
        pm.set_blocked(name)
    if os.environ.get(TRACE_ENV):
        pm.trace.root.setwriter(log.debug)
        pm.enable_tracing()
    if builtins:
        for module_name in BUILTIN_PLUGINS:
            name = "builtin:" + module_name.rsplit(".", 1)[1]
            if pm.is_blocked(name):
                continue
            pm.register_named(
                _import(module_name, f"built-in plugin {module_name}"), name, "builtin"
            )
    if autoload is None:
        autoload = not os.environ.get(DISABLE_AUTOLOAD_ENV)
    if autoload:
        _load_entry_points(pm)
    for plugin in plugins:
        if isinstance(plugin, str):
            if pm.is_blocked(plugin) or pm.has_plugin(plugin):
                continue
            with _search_path(search_paths):
                module = _import(plugin, f"recipe plugin {plugin!r}")
            if pm.is_registered(module):  # already loaded, e.g. through its entry point
                continue
            pm.register_named(module, plugin, "recipe")
        else:
            pm.register_named(plugin, pm.get_canonical_name(plugin), "api")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        raise PluginLoadError(
            f"plugin {name!r} ({pm.describe(name)}): {hook_problem(exc)}"
        ) from exc
    return pm


def _load_entry_points(pm: PluginManager) -> None:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.is_blocked(ep.name) or pm.has_plugin(ep.name):
            continue
        dist = ep.dist
        dist_label = f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"
        source = f"entry point {ep.name} = {ep.value}, from {dist_label}"
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginLoadError(
                f"plugin {ep.name!r} ({source}) failed to import: "
                f"{type(exc).__name__}: {exc} (reinstall or uninstall {dist_label}, or set "
                f"{DISABLE_AUTOLOAD_ENV}=1)"
            ) from exc
        pm.register_named(plugin, ep.name, source)
        if dist is not None:
            pm.distributions[ep.name] = (dist.name, dist.version)


def _import(module_name: str, what: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise PluginLoadError(
                f"{what}: no module named {module_name!r} (put {module_name}.py beside the "
                "recipe or install it)"
            ) from exc
        raise PluginLoadError(f"{what} failed to import: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise PluginLoadError(f"{what} failed to import: {type(exc).__name__}: {exc}") from exc


class _search_path:
    """Temporarily put folders at the front of ``sys.path``."""

    def __init__(self, paths: Iterable[Path | str]) -> None:
        self.paths = [str(Path(p).resolve()) for p in paths]

    def __enter__(self) -> None:
        for p in reversed(self.paths):
            sys.path.insert(0, p)

    def __exit__(self, *exc: object) -> None:
        for p in self.paths:
            sys.path.remove(p)


def hook_problem(exc: pluggy.PluginValidationError) -> str:
    """Reword pluggy's validation message on one line, suggesting the closest hook or
    argument name."""
    message = str(exc)
    known = [n for n in dir(hookspecs) if n.startswith("denoisekit_")]
    unknown_hook = re.search(r"unknown hook '(\w+)'", message)
    if unknown_hook:
        hook = unknown_hook.group(1)
        return f"unknown hook {hook!r}{did_you_mean(hook, known)}"
    bad_args = re.search(
        r"for hook '(\w+)'\nhookimpl definition: (.*)\nArgument\(s\) \{(.*)\} are declared",
        message,
    )
    if bad_args and bad_args.group(1) in known:
        hook, definition = bad_args.group(1), bad_args.group(2)
        extra = sorted(re.findall(r"'(\w+)'", bad_args.group(3)))
        passed = list(inspect.signature(getattr(hookspecs, hook)).parameters)
        return (
            f"{definition} asks for {extra}, which hook {hook} does not pass (it passes "
            f"{passed}){did_you_mean(extra[0], passed) if extra else ''}"
        )
    return " ".join(message.split())
