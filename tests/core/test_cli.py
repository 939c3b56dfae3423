"""The command line: one-line errors with exit status 2, plugins listing, recipe check/show."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from denoisekit.cli import main

TOY = Path(__file__).with_name("toy_plugin.py")

RECIPE = """
plugins = ["toy_components"]
[data]
type = "toydata"
[backbone]
type = "toynet"
[sampler]
type = "toysampler"
steps = 5
"""


@pytest.fixture
def recipe_dir(tmp_path):
    # The toy components, less those whose names the built-ins also provide.
    text = TOY.read_text() + (
        "\n\n@hookimpl\ndef denoisekit_components():  # noqa: F811\n"
        "    return [s for s in SPECS if s.name.startswith('toy')]\n"
    )
    (tmp_path / "toy_components.py").write_text(text)
    (tmp_path / "r.toml").write_text(textwrap.dedent(RECIPE))
    yield tmp_path
    sys.modules.pop("toy_components", None)


def test_recipe_check_ok(recipe_dir, capsys):
    assert main(["recipe", "check", str(recipe_dir / "r.toml")]) == 0
    assert "ok" in capsys.readouterr().out


def test_user_error_is_one_line_exit_2(recipe_dir, capsys):
    status = main(["recipe", "check", str(recipe_dir / "r.toml"), "--set", "sampler.steps=-1"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1
    assert err.startswith("denoisekit: error: ")
    assert "sampler.steps: 'steps' must be > 0: -1" in err
    assert "Traceback" not in err


def test_debug_shows_traceback(recipe_dir, capsys):
    status = main(
        ["--debug", "recipe", "check", str(recipe_dir / "r.toml"), "--set", "sampler.steps=-1"]
    )
    assert status == 2
    assert "Traceback" in capsys.readouterr().err


def test_recipe_show_round_trips(recipe_dir, capsys):
    assert main(["recipe", "show", str(recipe_dir / "r.toml"), "--set", "sampler.eta=0.5"]) == 0
    shown = capsys.readouterr().out
    (recipe_dir / "shown.toml").write_text(shown)
    from denoisekit.host.recipe import load_recipe

    assert load_recipe(recipe_dir / "shown.toml") == load_recipe(
        recipe_dir / "r.toml", ["sampler.eta=0.5"]
    )


def test_plugins_lists_options_and_providers(capsys):
    assert main(["plugins", "sampler"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sampler:")
    assert "ddim" in out and "ddpm" in out
    assert "provided by builtin:ddim (builtin)" in out
    assert "steps: int" in out


def test_plugins_with_recipe_plugins(recipe_dir, capsys):
    assert main(["plugins", "backbone", "--recipe", str(recipe_dir / "r.toml")]) == 0
    out = capsys.readouterr().out
    assert "toynet" in out and "provided by toy_components (recipe)" in out
    assert "channels: int = 8  base channels" in out


@pytest.mark.parametrize("cmd", [["denoisekit"], [sys.executable, "-m", "denoisekit"]])
def test_console_entry_and_python_m(recipe_dir, cmd):
    if cmd == ["denoisekit"] and shutil.which("denoisekit") is None:
        pytest.skip("console script not on PATH")
    result = subprocess.run(
        [*cmd, "recipe", "check", str(recipe_dir / "r.toml"), "--set", "backbone.chanels=3"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        "backbone.chanels: unknown key (did you mean 'channels'?) (set by --set)"
    )
