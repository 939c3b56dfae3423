"""The conformance suite as a pytest test class that plugin authors subclass.

::

    from denoisekit.testing import ComponentConformance

    class TestMyPlugin(ComponentConformance):
        plugins = ["my_plugin.hooks"]          # module names or plugin objects
        configs = {"sampler:mysampler": [MyConfig(steps=3), MyConfig(steps=7)]}

pytest then runs, for every component those plugins provide:

* ``test_registry_accepts``: a registry of the built-ins plus these plugins builds (no name
  clash with a built-in, every contract check passes);
* ``test_conformance[kind:name]``: the conformance check of its kind
  (:func:`denoisekit.testing.conformance.check_component`) on each config: the ``configs``
  given for it, else :func:`~denoisekit.testing.conformance.default_config` (its probe
  options, else its defaults);
* ``test_tiny_run[kind:name]``: two training steps of the tiny digits recipe with the
  component swapped in (a backbone with its probe options at 1×8×8, a hook added to
  ``[hooks]``), then two samples in [-1, 1]; kinds in ``run_kinds`` only, options from
  ``run_options``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest

from denoisekit.contracts import KIND_RECORDS, ComponentSpec
from denoisekit.errors import DenoisekitError
from denoisekit.testing.conformance import check_component, default_config, single_thread
from denoisekit.testing.recipes import TINY_RECIPE, train_tiny, write_recipe

__all__ = ["Case", "ComponentConformance"]

#: Kinds a tiny training run can swap in (data and metrics need more than a tiny run).
RUN_KINDS: tuple[str, ...] = tuple(k.name for k in KIND_RECORDS if k.runs)


@attrs.frozen
class Case:
    """One component with one config (``None``: the default) or recipe options."""

    spec: ComponentSpec
    config: Any = None
    index: int = 0

    def __str__(self) -> str:
        label = f"{self.spec.kind}:{self.spec.name}"
        return label if self.index == 0 else f"{label}-{self.index}"


class ComponentConformance:
    """Subclass as ``Test...`` and set :attr:`plugins` to run the suites on their components.

    Attributes:
        plugins: the plugins under test: module names (imported as a recipe's
            ``plugins = [...]``) or plugin objects.
        configs: ``"kind:name"`` → the configs to check it with, instead of the default one
            (config instances, or dicts of options).
        run_kinds: kinds also exercised in a tiny training run; ``()`` turns runs off.
        run_options: ``"kind:name"`` → the recipe options of its tiny run (default: a
            backbone's probe options, others' defaults).
    """

    plugins: ClassVar[Sequence[Any]] = ()
    configs: ClassVar[Mapping[str, Sequence[Any]]] = {}
    run_kinds: ClassVar[Sequence[str]] = RUN_KINDS
    run_options: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    #: Why the plugins' components could not be listed (reported by test_registry_accepts).
    _load_error: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        specs, cls._load_error = _plugin_specs(cls.plugins)
        cases = [
            Case(spec, config, i)
            for spec in specs
            for i, config in enumerate(cls.configs.get(f"{spec.kind}:{spec.name}", [None]))
        ]
        run_cases = [Case(spec) for spec in specs if spec.kind in cls.run_kinds]

        # New functions per subclass, parametrized over its own components.
        @pytest.mark.parametrize("case", cases, ids=str)
        def test_conformance(self: ComponentConformance, case: Case) -> None:
            """The conformance check of the component's kind."""
            config = case.config
            if isinstance(config, Mapping):  # options, as a recipe table gives them
                config = case.spec.config(**config)
            check_component(case.spec, config)

        @pytest.mark.parametrize("case", run_cases, ids=str)
        def test_tiny_run(self: ComponentConformance, case: Case, tmp_path: Path) -> None:
            """Two training steps and two samples with the component swapped in."""
            self.check_tiny_run(case, tmp_path)

        cls.test_conformance = test_conformance
        if cls.run_kinds:
            cls.test_tiny_run = test_tiny_run

    def test_registry_accepts(self) -> None:
        """The plugins load beside the built-ins; every contract check passes."""
        from denoisekit.host.plugin_manager import get_plugin_manager
        from denoisekit.host.registry import Registry

        assert self.plugins, f"{type(self).__name__}: set `plugins` to the plugins under test"
        assert self._load_error is None, self._load_error
        pm = get_plugin_manager(autoload=False)
        for plugin in self.plugins:
            obj = importlib.import_module(plugin) if isinstance(plugin, str) else plugin
            if not pm.is_registered(obj):  # a built-in under test is registered already
                name = plugin if isinstance(plugin, str) else pm.get_canonical_name(obj)
                pm.register_named(obj, name, "api")
        registry = Registry.from_plugin_manager(pm)
        specs, _ = _plugin_specs(self.plugins)
        for spec in specs:
            assert registry.get(spec.kind, spec.name).spec == spec

    def check_tiny_run(self, case: Case, tmp_path: Path) -> None:
        """Train the tiny recipe with ``case``'s component swapped in; sample two images."""
        import torch

        spec = case.spec
        options = dict(self.run_options.get(f"{spec.kind}:{spec.name}", _run_options(spec)))
        if spec.kind == "hook":
            overrides: dict[str, Any] = {"hooks": {spec.name: options}}
        else:
            overrides = {spec.kind: {"type": spec.name, **options}}
        path = write_recipe(tmp_path, overrides)
        run = train_tiny(path, plugins=self.plugins, out_dir=tmp_path / "run")
        steps = TINY_RECIPE["train"]["steps"]
        assert run.step == steps, f"{case}: trained {run.step} steps, expected {steps}"
        with single_thread():
            images = run.sample(2, generator=torch.Generator().manual_seed(0))
        assert tuple(images.shape) == (2, 1, 8, 8), f"{case}: samples of shape {images.shape}"
        assert bool(torch.isfinite(images).all()), f"{case}: non-finite samples"
        assert float(images.abs().max()) <= 1.0, f"{case}: samples leave [-1, 1]"


def _plugin_specs(plugins: Sequence[Any]) -> tuple[list[ComponentSpec], str | None]:
    """The components the plugins provide, alone (no built-ins, no entry points)."""
    from denoisekit.host.registry import load_registry

    if not plugins:
        return [], None
    try:
        registry = load_registry(plugins=list(plugins), builtins=False, autoload=False)
        return [e.spec for e in registry.entries()], None
    except DenoisekitError as exc:
        return [], str(exc)


def _run_options(spec: ComponentSpec) -> dict[str, Any]:
    if spec.kind != "backbone":
        return {}
    config = default_config(spec)
    probe = dict(spec.probe or {})
    # Digits are 1×8×8; everything else from the probe (small by design) as TOML values.
    options = {k: getattr(config, k) for k in probe}
    options.update(in_channels=1, image_size=8)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
