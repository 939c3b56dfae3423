"""The plugin manager: built-ins by name, entry points, recipe plugins, errors naming plugins."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from denoisekit.errors import PluginLoadError
from denoisekit.host.plugin_manager import (
    BUILTIN_PLUGINS,
    DISABLE_AUTOLOAD_ENV,
    get_plugin_manager,
)
from denoisekit.host.registry import Registry


def _write_dist(site: Path, dist: str, version: str, module: str, body: str) -> None:
    """A real installed distribution (dist-info with an entry point) in ``site``."""
    info = site / f"{dist}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[denoisekit]\n{module} = {module}\n")
    (site / f"{module}.py").write_text(textwrap.dedent(body))


GOOD_PLUGIN = """
    import attrs
    from denoisekit import ComponentSpec, hookimpl

    @attrs.frozen
    class Cfg:
        pass

    @hookimpl
    def denoisekit_components():
        return [ComponentSpec(kind="sampler", name="epsampler", config=Cfg, build=lambda c: c)]
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    yield site
    for name in [m for m in sys.modules if m.startswith(("epplug", "badplug", "recplug"))]:
        del sys.modules[name]


def test_core_import_does_not_import_plugins():
    code = (
        "import sys, denoisekit, denoisekit.host.recipe, denoisekit.host.registry, denoisekit.cli, "
        "denoisekit.host.plugin_manager, denoisekit.hookspecs, denoisekit.contracts\n"
        "bad = [m for m in sys.modules if m.startswith('denoisekit.plugins')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_builtins_are_registered_by_name():
    pm = get_plugin_manager(autoload=False)
    names = {pm.get_name(p) for p in pm.get_plugins()}
    for module in BUILTIN_PLUGINS:
        assert "builtin:" + module.rsplit(".", 1)[1] in names


def test_entry_point_discovered_from_installed_distribution(site):
    _write_dist(site, "epplug-dist", "1.2.3", "epplug", GOOD_PLUGIN)
    pm = get_plugin_manager(builtins=False)
    assert pm.has_plugin("epplug")
    assert pm.distributions["epplug"] == ("epplug-dist", "1.2.3")
    entry = Registry.from_plugin_manager(pm).get("sampler", "epsampler")
    assert entry.plugin == "epplug"
    assert "epplug-dist 1.2.3" in entry.source


def test_autoload_switch(site, monkeypatch):
    _write_dist(site, "epplug-dist", "1.2.3", "epplug", GOOD_PLUGIN)
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    pm = get_plugin_manager(builtins=False)
    assert not pm.has_plugin("epplug")


def test_entry_point_import_failure_names_distribution(site):
    _write_dist(site, "badplug-dist", "0.4", "badplug", "raise ImportError('no torch here')\n")
    with pytest.raises(PluginLoadError) as info:
        get_plugin_manager(builtins=False)
    message = str(info.value)
    assert "'badplug'" in message
    assert "badplug-dist 0.4" in message
    assert "no torch here" in message
    assert "\n" not in message


def test_misspelt_hook_is_named_with_suggestion(tmp_path):
    (tmp_path / "recplug_typo.py").write_text(
        "from denoisekit import hookimpl\n\n@hookimpl\ndef denoisekit_componets():\n    return []\n"
    )
    with pytest.raises(PluginLoadError) as info:
        get_plugin_manager(
            builtins=False, autoload=False, plugins=["recplug_typo"], search_paths=[tmp_path]
        )
    message = str(info.value)
    assert "recplug_typo" in message
    assert "unknown hook 'denoisekit_componets'" in message
    assert "did you mean 'denoisekit_components'" in message
    sys.modules.pop("recplug_typo", None)


def test_unknown_hook_argument_is_an_error(tmp_path):
    (tmp_path / "recplug_arg.py").write_text(
        "from denoisekit import hookimpl\n\n@hookimpl\ndef denoisekit_train_start(run, nope):\n"
        "    pass\n"
    )
    with pytest.raises(PluginLoadError, match=r"recplug_arg.*nope") as info:
        get_plugin_manager(
            builtins=False, autoload=False, plugins=["recplug_arg"], search_paths=[tmp_path]
        )
    assert str(info.value) == (
        "plugin 'recplug_arg' (recipe): denoisekit_train_start(run, nope) asks for ['nope'], "
        "which hook denoisekit_train_start does not pass (it passes ['run'])"
    )
    sys.modules.pop("recplug_arg", None)


def test_recipe_plugin_import_failure(tmp_path):
    (tmp_path / "recplug_broken.py").write_text("import numpy\nraise RuntimeError('boom')\n")
    with pytest.raises(PluginLoadError, match=r"recplug_broken.*RuntimeError: boom"):
        get_plugin_manager(
            builtins=False, autoload=False, plugins=["recplug_broken"], search_paths=[tmp_path]
        )


def test_missing_recipe_plugin(tmp_path):
    with pytest.raises(PluginLoadError, match="no module named 'recplug_absent'"):
        get_plugin_manager(
            builtins=False, autoload=False, plugins=["recplug_absent"], search_paths=[tmp_path]
        )


def test_search_path_is_restored(tmp_path):
    before = list(sys.path)
    (tmp_path / "recplug_ok.py").write_text("")
    get_plugin_manager(
        builtins=False, autoload=False, plugins=["recplug_ok"], search_paths=[tmp_path]
    )
    assert sys.path == before
    sys.modules.pop("recplug_ok", None)


def test_disabled_builtin_is_not_registered():
    pm = get_plugin_manager(autoload=False, disabled=["builtin:ddim"])
    assert not pm.has_plugin("builtin:ddim")
    assert "ddim" not in Registry.from_plugin_manager(pm).names("sampler")


def test_fresh_manager_each_call():
    assert get_plugin_manager(autoload=False) is not get_plugin_manager(autoload=False)
