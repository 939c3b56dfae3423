"""The component table: kind → name → the spec and the plugin that provided it.

Built per plugin manager from the ``denoisekit_components`` hook; never a global. Every
component's contract is checked when the table is built
(:func:`denoisekit.host.contract_checks.contract_problems`), so a broken plugin is rejected with an
error naming it before any run starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from denoisekit.contracts import KINDS, ComponentSpec
from denoisekit.errors import (
    ComponentError,
    DenoisekitError,
    PluginLoadError,
    RegistryError,
)
from denoisekit.host.contract_checks import contract_problems, hook_problems
from denoisekit.host.plugin_manager import PluginManager, get_plugin_manager
from denoisekit.host.signatures import signature_problems
from denoisekit.host.suggest import did_you_mean, exception_line


@attrs.frozen
class RegisteredComponent:
    """A component spec with its provider."""

    spec: ComponentSpec
    plugin: str  # the name the plugin is registered under
    source: str  # where the plugin came from ("builtin", "entry point ...", "recipe", "api")

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def label(self) -> str:
        """``plugin 'p' (source): kind 'name'``, how error messages name the component."""
        return f"plugin {self.plugin!r} ({self.source}): {self.kind} {self.name!r}"


class Registry:
    """Every component a plugin manager's plugins provide, by kind and name.

    Args:
        components: the records, with their providers.
        plugins: plugin name → where it came from, for run metadata.
        check_contracts: check every component's contract (cheap: see
            :func:`denoisekit.host.contract_checks.contract_problems`).

    Raises:
        RegistryError: two plugins provide one kind and name, or a component breaks its
            contract (the message names the plugin, the component and what is wrong).
    """

    def __init__(
        self,
        components: Iterator[RegisteredComponent] | list[RegisteredComponent],
        plugins: dict[str, str] | None = None,
        *,
        check_contracts: bool = True,
    ):
        #: plugin name → where it came from, for run metadata.
        self.plugins: dict[str, str] = dict(plugins or {})
        self._table: dict[str, dict[str, RegisteredComponent]] = {kind: {} for kind in KINDS}
        for entry in components:
            table = self._table[entry.kind]
            if entry.name in table:
                other = table[entry.name]
                raise RegistryError(
                    f"two plugins provide {entry.kind} {entry.name!r}: {other.plugin!r} "
                    f"({other.source}) and {entry.plugin!r} ({entry.source}); uninstall or "
                    "disable one of them"
                )
            table[entry.name] = entry
        if check_contracts:
            for entry in self.entries():
                problems = contract_problems(entry.spec)
                if problems:
                    raise RegistryError(
                        f"{entry.label} breaks the {entry.kind} contract: {'; '.join(problems)}"
                    )

    @classmethod
    def from_plugin_manager(cls, pm: PluginManager, *, check_contracts: bool = True) -> Registry:
        """Call every plugin's ``denoisekit_components`` and collect the records."""
        plugins = {pm.get_name(p) or repr(p): "" for p in pm.get_plugins()}
        return cls(
            list(_collect(pm)),
            {name: pm.describe(name) for name in plugins},
            check_contracts=check_contracts,
        )

    def names(self, kind: str) -> list[str]:
        """The registered names of ``kind``, sorted."""
        return sorted(self._table[_checked_kind(kind)])

    def entries(self, kind: str | None = None) -> list[RegisteredComponent]:
        """All entries (of one kind), in kind order then name order."""
        kinds = KINDS if kind is None else (_checked_kind(kind),)
        return [self._table[k][n] for k in kinds for n in sorted(self._table[k])]

    def get(self, kind: str, name: str) -> RegisteredComponent:
        """The entry for ``kind``/``name``; an unknown name lists the known ones."""
        table = self._table[_checked_kind(kind)]
        try:
            return table[name]
        except KeyError:
            known = ", ".join(sorted(table)) or "none"
            raise RegistryError(
                f"unknown {kind} {name!r}{did_you_mean(name, table)}; registered {kind}s: {known}"
            ) from None

    def build(self, kind: str, name: str, config: Any = None, **context: Any) -> Any:
        """Build a component: ``spec.build(config, **context)``; config defaults to the class's.

        Every component of a run is built here, so a failing factory is reported in one
        place, naming its plugin.

        Raises:
            ComponentError: the factory raised (a :class:`DenoisekitError` passes through
                as it is; anything else is quoted, and is the error's ``__cause__``), it
                built a hook whose ``@hookimpl`` methods name an unknown hook or argument,
                or a component whose methods do not match its kind's contract (checked
                here, before anything is called, where the registry could not tell from
                the spec which class ``build`` makes).
        """
        entry = self.get(kind, name)
        if config is None:
            config = entry.spec.config()
        try:
            built = entry.spec.build(config, **context)
        except DenoisekitError:
            raise
        except Exception as exc:
            raise ComponentError(
                f"{entry.label} failed to build: {exception_line(exc)} (--debug shows where)"
            ) from exc
        if kind == "hook":
            problems = hook_problems(built)
            if problems:
                raise ComponentError(f"{entry.label}: {'; '.join(problems)}")
        problems = signature_problems(kind, built)
        if problems:
            raise ComponentError(f"{entry.label} breaks the {kind} contract: {problems[0]}")
        return built


def _checked_kind(kind: str) -> str:
    if kind not in KINDS:
        raise RegistryError(
            f"unknown component kind {kind!r}{did_you_mean(kind, KINDS)}; the kinds are "
            f"{', '.join(KINDS)}"
        )
    return kind


def _collect(pm: PluginManager) -> Iterator[RegisteredComponent]:
    for impl in pm.hook.denoisekit_components.get_hookimpls():
        name = impl.plugin_name
        source = pm.describe(name)
        try:
            records = list(impl.function() or ())
        except Exception as exc:
            raise PluginLoadError(
                f"plugin {name!r} ({source}): denoisekit_components failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        for record in records:
            if not isinstance(record, ComponentSpec):
                raise RegistryError(
                    f"plugin {name!r} ({source}): denoisekit_components returned {record!r}, "
                    "not a denoisekit.ComponentSpec"
                )
            yield RegisteredComponent(spec=record, plugin=name, source=source)


def load_registry(
    *, plugins: Sequence[str | Any] = (), search_paths: Iterable[Path | str] = (), **options: Any
) -> Registry:
    """The registry of a fresh plugin manager: :func:`get_plugin_manager` with the same
    arguments (``plugins``: module names or objects; ``search_paths``: folders where recipe
    plugin modules are looked for first; ``options``: ``autoload``, ``builtins``, ...)."""
    pm = get_plugin_manager(plugins=plugins, search_paths=search_paths, **options)
    return Registry.from_plugin_manager(pm)
