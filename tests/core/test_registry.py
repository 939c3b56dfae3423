"""The component registry: records, duplicates, unknown names, failing plugins."""

from __future__ import annotations

import attrs
import pytest

from denoisekit import ComponentSpec, hookimpl
from denoisekit.errors import ComponentError, DataError, PluginLoadError, RegistryError
from denoisekit.host.plugin_manager import get_plugin_manager
from denoisekit.host.registry import Registry
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
    kinds = "'nosuch'; the kinds are data, autoencoder, schedule, backbone"
    with pytest.raises(RegistryError, match=kinds):
        _registry(toy_plugin).names("nosuch")


def _named_registry(*specs):
    pm = get_plugin_manager(builtins=False, autoload=False)
    pm.register_named(Provider(*specs), "thirdparty", "entry point tp = tp.plugin, from tp 1.0")
    return Registry.from_plugin_manager(pm)


@pytest.mark.parametrize(
    "error",
    [ValueError("bad width"), TypeError("bad\n  width"), RuntimeError("bad width"), KeyError(3)],
)
def test_build_failure_names_plugin_and_component(error):
    def build(config):
        raise error

    registry = _named_registry(ComponentSpec(kind="backbone", name="net", config=Cfg, build=build))
    with pytest.raises(ComponentError) as info:
        registry.build("backbone", "net")
    text = " ".join(str(error).split())
    assert str(info.value) == (
        "plugin 'thirdparty' (entry point tp = tp.plugin, from tp 1.0): backbone 'net' failed to "
        f"build: {type(error).__name__}: {text} (--debug shows where)"
    )
    assert info.value.__cause__ is error  # the traceback --debug shows


def test_build_user_errors_pass_through():
    def build(config, root, train):
        raise DataError("data/: no images")

    registry = _named_registry(ComponentSpec(kind="data", name="d", config=Cfg, build=build))
    with pytest.raises(DataError, match=r"^data/: no images$"):
        registry.build("data", "d", root=None, train=True)


class MisspeltHook:
    @hookimpl
    def denoisekit_train_stat(self, run):
        pass


class MisnamedArgumentHook:
    @hookimpl
    def denoisekit_train_start(self, runn):
        pass


@pytest.mark.parametrize(
    ("hook_class", "problem"),
    [
        (
            MisspeltHook,
            "MisspeltHook.denoisekit_train_stat implements unknown hook 'denoisekit_train_stat' "
            "(did you mean 'denoisekit_train_start'?)",
        ),
        (
            MisnamedArgumentHook,
            "MisnamedArgumentHook.denoisekit_train_start asks for ['runn'], which hook "
            "denoisekit_train_start does not pass (it passes ['run']) (did you mean 'run'?)",
        ),
    ],
)
def test_built_hook_with_a_misspelt_hook_or_argument_names_plugin(hook_class, problem):
    def build(config):  # no return annotation: the registry's static check cannot see the class
        return hook_class()

    registry = _named_registry(ComponentSpec(kind="hook", name="h", config=Cfg, build=build))
    with pytest.raises(ComponentError) as info:
        registry.build("hook", "h")
    assert str(info.value) == (
        f"plugin 'thirdparty' (entry point tp = tp.plugin, from tp 1.0): hook 'h': {problem}"
    )


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
