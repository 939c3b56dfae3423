"""Recipes: TOML → Recipe, extends, --set, and one-line errors naming file and key path."""

from __future__ import annotations

import textwrap
import tomllib
from pathlib import Path

import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st

from denoisekit.errors import RecipeError
from denoisekit.host.plugin_manager import get_plugin_manager
from denoisekit.host.recipe import (
    TrainConfig,
    load_recipe,
    parse_override,
    recipe_from_data,
)
from denoisekit.host.registry import Registry
from tests.core import toy_plugin

BASE = """
name = "base"
seed = 3
[data]
type = "toydata"
path = "digits"
[backbone]
type = "toynet"
channels = 16
channel_mults = [1, 2, 2]
[sampler]
type = "toysampler"
steps = 20
[hooks.ema]
steps = 7
"""


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_plugin_manager(
        get_plugin_manager(builtins=False, autoload=False, plugins=[toy_plugin])
    )


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path, registry, overrides=()) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides, registry=registry)
    message = str(info.value)
    assert "\n" not in message, "errors are one line"
    return message


def test_loads_components_and_defaults(tmp_path, registry):
    recipe = load_recipe(write(tmp_path, "r.toml", BASE), registry=registry)
    assert recipe.name == "base"
    assert recipe.seed == 3
    assert recipe.backbone.type == "toynet"
    assert recipe.backbone.config == toy_plugin.ToyNetConfig(channels=16, channel_mults=(1, 2, 2))
    assert recipe.sampler.config.steps == 20
    assert recipe.sampler.config.eta == 0.0  # default filled in
    assert recipe.schedule.type == "cosine"  # default component for a missing table
    assert recipe.hooks["ema"].type == "ema"
    assert recipe.hooks["ema"].config.steps == 7
    assert recipe.train == TrainConfig()


def test_name_defaults_to_file_stem(tmp_path, registry):
    text = BASE.replace('name = "base"\n', "")
    assert load_recipe(write(tmp_path, "my-run.toml", text), registry=registry).name == "my-run"


def test_toml_syntax_error_names_file_and_line(tmp_path, registry):
    path = write(tmp_path, "bad.toml", BASE + "\n[sampler\n")
    message = error_of(path, registry)
    assert message.startswith(f"{path}: TOML syntax error")
    assert "line" in message


def test_missing_file(tmp_path, registry):
    message = error_of(tmp_path / "nope.toml", registry)
    assert message == f"{tmp_path / 'nope.toml'}: recipe file not found"


def test_unknown_key_suggests_closest(tmp_path, registry):
    path = write(tmp_path, "r.toml", BASE.replace("channels = 16", "chanels = 16"))
    message = error_of(path, registry)
    assert message == f"{path}: backbone.chanels: unknown key (did you mean 'channels'?)"


def test_unknown_top_level_key(tmp_path, registry):
    path = write(tmp_path, "r.toml", "sed = 1\n" + BASE)
    assert f"{path}: sed: unknown key (did you mean 'seed'?)" in error_of(path, registry)


def test_wrong_type_names_key_path(tmp_path, registry):
    path = write(tmp_path, "r.toml", BASE.replace("steps = 20", 'steps = "twenty"'))
    message = error_of(path, registry)
    assert message == f"{path}: sampler.steps: expected an integer, got 'twenty'"


def test_wrong_type_inside_array_has_index(tmp_path, registry):
    path = write(tmp_path, "r.toml", BASE.replace("[1, 2, 2]", '[1, "2", 2]'))
    assert f"{path}: backbone.channel_mults[1]: expected an integer" in error_of(path, registry)


def test_float_is_not_silently_truncated(tmp_path, registry):
    path = write(tmp_path, "r.toml", BASE.replace("steps = 20", "steps = 2.5"))
    assert "sampler.steps: expected an integer, got 2.5" in error_of(path, registry)


def test_validator_message_survives_at_field_path(tmp_path, registry):
    path = write(tmp_path, "r.toml", BASE.replace("steps = 20", "steps = 20\neta = 1.5"))
    message = error_of(path, registry)
    assert message == f"{path}: sampler.eta: 'eta' must be <= 1.0: 1.5"


def test_in_validator_message(tmp_path, registry):
    path = write(tmp_path, "r.toml", BASE.replace("steps = 20", 'spacing = "leadng"'))
    assert "sampler.spacing: 'spacing' must be in ('leading', 'trailing')" in error_of(
        path, registry
    )


def test_custom_validator_element_path(tmp_path, registry):
    path = write(tmp_path, "r.toml", BASE.replace("[1, 2, 2]", "[1, -2]"))
    message = error_of(path, registry)
    assert "backbone.channel_mults: 'channel_mults[1]' must be a positive integer: -2" in message


def test_unknown_component_suggests(tmp_path, registry):
    path = write(tmp_path, "r.toml", BASE.replace('"toysampler"', '"toysampelr"'))
    message = error_of(path, registry)
    assert message.startswith(f"{path}: sampler.type: unknown sampler 'toysampelr'")
    assert "did you mean 'toysampler'" in message


def test_missing_required_table(tmp_path, registry):
    path = write(tmp_path, "r.toml", BASE.replace('[data]\ntype = "toydata"\npath = "digits"', ""))
    assert "data: missing table [data]" in error_of(path, registry)


def test_train_cross_field_validator(tmp_path, registry):
    path = write(tmp_path, "r.toml", BASE + "[train]\nbatch_size = 10\ngrad_accum = 3\n")
    assert "train.grad_accum: 'grad_accum' (3) must divide 'batch_size' (10)" in error_of(
        path, registry
    )


def test_extends_chain_and_precedence(tmp_path, registry):
    write(tmp_path, "base.toml", BASE)
    (tmp_path / "sub").mkdir()
    write(
        tmp_path / "sub", "mid.toml", 'extends = "../base.toml"\n[sampler]\nsteps = 30\neta = 0.5\n'
    )
    child = write(
        tmp_path / "sub",
        "child.toml",
        'extends = "mid.toml"\nname = "child"\n[sampler]\nsteps = 40\n',
    )
    recipe = load_recipe(child, registry=registry)
    assert recipe.name == "child"
    assert recipe.sampler.config.steps == 40  # child over mid
    assert recipe.sampler.config.eta == 0.5  # mid over base
    assert recipe.backbone.config.channels == 16  # from base
    recipe = load_recipe(
        child, ["sampler.steps=50", "backbone.channel_mults=[1,2]"], registry=registry
    )
    assert recipe.sampler.config.steps == 50  # --set over everything
    assert recipe.backbone.config.channel_mults == (1, 2)


def test_extends_cycle_detected(tmp_path, registry):
    write(tmp_path, "a.toml", 'extends = "b.toml"\n')
    write(tmp_path, "b.toml", 'extends = "a.toml"\n')
    assert "extends: cycle detected" in error_of(tmp_path / "a.toml", registry)


def test_extends_missing_file(tmp_path, registry):
    path = write(tmp_path, "a.toml", 'extends = "gone.toml"\n')
    assert error_of(path, registry).startswith(f"{path}: extends: 'gone.toml' not found")


def test_error_in_base_names_where_it_was_set(tmp_path, registry):
    base = write(tmp_path, "base.toml", BASE.replace("channels = 16", "channels = 0"))
    child = write(tmp_path, "child.toml", 'extends = "base.toml"\n')
    message = error_of(child, registry)
    assert f"backbone.channels: 'channels' must be > 0: 0 (set by {base})" in message


def test_changing_type_drops_old_options(tmp_path, registry):
    path = write(tmp_path, "r.toml", BASE)
    recipe = load_recipe(path, ["sampler.type=toysampler2"], registry=registry)
    assert recipe.sampler.type == "toysampler2"
    assert recipe.sampler.config.steps == 10  # toysampler's steps = 20 did not leak


def test_bad_override_syntax(tmp_path, registry):
    path = write(tmp_path, "r.toml", BASE)
    assert "expected KEY.PATH=VALUE" in error_of(path, registry, ["sampler.steps"])
    assert "sampler.steps: expected an integer" in error_of(path, registry, ["sampler.steps=x"])


def test_show_round_trips(tmp_path, registry):
    recipe = load_recipe(
        write(tmp_path, "r.toml", BASE), ["train.grad_clip=1.0"], registry=registry
    )
    text = recipe.to_toml()
    again = load_recipe(write(tmp_path, "shown.toml", text), registry=registry)
    assert again == recipe
    assert "eta = 0.0" in text  # defaults are written out


def test_recipe_from_data_without_file(registry):
    recipe = recipe_from_data(tomllib.loads(BASE), registry)
    assert recipe.path is None and recipe.backbone.type == "toynet"


_keys = st.lists(st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True), min_size=1, max_size=4)
_values = st.recursive(
    st.integers(-(10**6), 10**6)
    | st.booleans()
    | st.text(max_size=10)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=6,
)


@given(keys=_keys, value=_values)
def test_override_parser_round_trip(keys, value):
    rendered = tomli_w.dumps({"v": value}).split("=", 1)[1].strip()
    parsed_keys, parsed = parse_override(".".join(keys) + "=" + rendered)
    assert parsed_keys == keys
    assert parsed == value


def test_override_bare_word_is_a_string():
    assert parse_override("sampler.type=ddim") == (["sampler", "type"], "ddim")
    assert parse_override("train.device=cuda:1") == (["train", "device"], "cuda:1")
