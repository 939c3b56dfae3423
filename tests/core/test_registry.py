"""The component registry: records, duplicates, unknown names, failing plugins."""

from __future__ import annotations

import attrs
import pytest

from denoisekit import ComponentSpec, hookimpl
from denoisekit.errors import PluginLoadError, RegistryError
from denoisekit.plugin_manager import get_plugin_manager
from denoisekit.registry import Registry
from tests.core import toy_plugin


def _registry(*plugins):
    return Registry.from_plugin_manager(
        get_plugin_manager(builtins=False, autoload=False, plugins=plugins)
    )


@attrs.frozen
class Cfg:
    pass


class Provider:
    def __init__(self, *specs):
        self.specs = specs

    @hookimpl
    def denoisekit_components(self):
        return self.specs


def test_components_by_kind_and_name():
    registry = _registry(toy_plugin)
    assert registry.names("backbone") == ["toynet"]
    entry = registry.get("backbone", "toynet")
    assert entry.spec.config is toy_plugin.ToyNetConfig
    assert entry.plugin == "tests.core.toy_plugin"
    built = registry.build("sampler", "toysampler", toy_plugin.ToySamplerConfig(steps=3), x=1)
    assert built == ("built", toy_plugin.ToySamplerConfig(steps=3), {"x": 1})


def test_duplicate_name_names_both_plugins():
    spec = ComponentSpec(kind="sampler", name="dup", config=Cfg, build=lambda c: c)
    first, second = Provider(spec), Provider(spec)
    pm = get_plugin_manager(builtins=False, autoload=False)
    pm.register_named(first, "first-plugin", "api")
    pm.register_named(second, "second-plugin", "api")
    with pytest.raises(RegistryError) as info:
        Registry.from_plugin_manager(pm)
    assert "first-plugin" in str(info.value)
    assert "second-plugin" in str(info.value)
    assert "sampler 'dup'" in str(info.value)


def test_same_name_in_other_kinds_is_fine():
    a = ComponentSpec(kind="sampler", name="same", config=Cfg, build=lambda c: c)
    b = ComponentSpec(kind="schedule", name="same", config=Cfg, build=lambda c: c)
    registry = _registry(Provider(a, b))
    assert registry.names("sampler") == ["same"] == registry.names("schedule")


def test_unknown_name_lists_known_and_suggests():
    registry = _registry(toy_plugin)
    with pytest.raises(RegistryError) as info:
        registry.get("sampler", "toysampelr")
    message = str(info.value)
    assert "did you mean 'toysampler'" in message
    assert "registered samplers: toysampler" in message


def test_unknown_kind():
    with pytest.raises(RegistryError, match="did you mean 'sampler'"):
        _registry(toy_plugin).names("samplers")


def test_registration_hook_that_raises_names_plugin():
    class Broken:
        @hookimpl
        def denoisekit_components(self):
            raise RuntimeError("cannot build")

    pm = get_plugin_manager(builtins=False, autoload=False)
    pm.register_named(Broken(), "broken-plugin", "api")
    with pytest.raises(PluginLoadError, match=r"broken-plugin.*RuntimeError: cannot build"):
        Registry.from_plugin_manager(pm)


def test_registration_returning_junk_names_plugin():
    pm = get_plugin_manager(builtins=False, autoload=False)
    pm.register_named(Provider("not a spec"), "junk-plugin", "api")
    with pytest.raises(RegistryError, match=r"junk-plugin.*not a denoisekit.ComponentSpec"):
        Registry.from_plugin_manager(pm)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "samplers"}, "unknown component kind"),
        ({"name": "DDIM"}, "must be lowercase"),
        ({"config": dict}, "must be an attrs class"),
    ],
)
def test_spec_validation(kwargs, message):
    base = {"kind": "sampler", "name": "ok", "config": Cfg, "build": lambda c: c}
    with pytest.raises((ValueError, TypeError), match=message):
        ComponentSpec(**{**base, **kwargs})
