"""Mutated recipes: ``recipe check`` says what ``train`` says, in one line, never a traceback.

Hypothesis mutates small valid recipes (the tiny digits run, alone, with hooks, and
class-conditional with ``[guidance]``, ``train.label_dropout`` and the ``dpmpp-2m``
sampler's options) —
deleting, renaming and retyping keys, setting options the recipe leaves out (every option
of the registered components is a target), out-of-range values, tables where scalars
belong and scalars where tables belong — and feeds each mutant to ``denoisekit recipe
check`` and to a two-step ``denoisekit train``, in-process through
:func:`denoisekit.cli.main`:

* no exception escapes ``main`` (a traceback is a bug);
* the exit status is 0 or 2 and stderr holds at most two lines;
* ``recipe check`` and ``train`` agree: both succeed, or both fail with the same line
  (everything wrong with a recipe is found when it is loaded, before any work).

What the strategy leaves out, on purpose: valid values that make a run long or slow
(``train.steps`` and ``num_workers`` only get invalid or tiny values; no ``compile``
hook) and data components that read files (a missing data folder is the machine's state,
not the recipe's: ``recipe check`` does not look for the files).
"""

from __future__ import annotations

import copy
import math
import tempfile
import traceback
from pathlib import Path
from typing import Any

import attrs
import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from denoisekit.cli import main
from denoisekit.host.core_tables import CORE_TABLES
from denoisekit.host.recipe import DEFAULT_TYPES, MULTI_KINDS, SINGLE_KINDS, deep_merge
from denoisekit.host.registry import load_registry
from denoisekit.testing import TINY_RECIPE, single_thread

#: The bases: the tiny run, and the tiny run with hooks (the preview samples at the end,
#: so sampler options are exercised; the checkpoint writes files).
HOOKS = {
    "hooks": {
        "ema": {"decay": 0.9, "start_step": 1},
        "preview": {"every": 1000, "num_images": 2, "seed": 3},
        "checkpoint": {"every": 2, "keep": 1},
    },
    "lr_schedule": {"type": "warmup-cosine", "warmup_steps": 1, "min_lr": 1e-5},
}
#: Classifier-free guidance with the DPM-Solver++(2M) sampler: a class-conditional backbone
#: trained with label dropout, a preview at the end (so the guided sampler runs in train).
GUIDED = {
    "backbone": {"num_classes": 10},
    "train": {"label_dropout": 0.1},
    "guidance": {"scale": 1.5, "rescale": 0.5, "interval": [0.1, 0.9]},
    "sampler": {"type": "dpmpp-2m", "steps": 4, "lambda_min": -5.1, "spacing": "logsnr"},
    "hooks": {"preview": {"every": 1000, "num_images": 2, "seed": 3}},
}
BASES = [
    copy.deepcopy(TINY_RECIPE),
    deep_merge(copy.deepcopy(TINY_RECIPE), HOOKS),
    deep_merge(copy.deepcopy(TINY_RECIPE), GUIDED),
]

#: Strings a mutant may hold: component names (of every kind, so types switch to siblings
#: and to other kinds' names), option values, and nonsense.
WORDS = [
    *("ddim", "ddpm", "cosine", "linear", "constant", "warmup-cosine", "adam", "adamw", "sgd"),
    *("mse", "unet", "digits", "ema", "checkpoint", "preview", "tensorboard", "evaluate"),
    *("auto", "cpu", "cuda", "cuda:0", "gpu", "mps", "eps", "x0", "v", "leading", "trailing"),
    *("linspace", "fixed_small", "fixed_large", "scale_shift", "log_snr", "test", "all"),
    *("", "nope", "Digits", " ddim", "1", "true", "a.b", "../up"),
]
#: Integers: out of range (negative, zero, beyond 64 bits), small, around the tiny T = 100.
INTS = [-1, 0, 1, 2, 3, 8, 100, 101, 2**63, -(2**63) - 1, 10**30]
FLOATS = [-1.0, 0.0, 0.5, 1.0, 1e-300, 1e300, -1e300, math.inf, -math.inf, math.nan]
OTHERS = [True, False, [], [1, 2], [0.5], ["a"], {}, {"x": 1}]
#: (table, key) whose valid values would make a run long or slow, with the values allowed.
SLOW = {
    ("train", "steps"): [1, 2],
    ("train", "num_workers"): [0],
    ("train", "batch_size"): [1, 2, 8],
    ("hooks", "num_images"): [1, 2],
    ("hooks", "num_samples"): [2],
}


def slow(path: tuple[str, ...]) -> bool:
    return (path[0], path[-1]) in SLOW


def _options() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) → {option: default} of every built-in component, and the core tables."""
    registry = load_registry(autoload=False)
    out = {
        (e.kind, e.name): {f.name: _default(f) for f in attrs.fields(e.spec.config)}
        for e in registry.entries()
    }
    for table, config in CORE_TABLES.items():  # [train], [guidance]
        out[table, ""] = {f.name: _default(f) for f in attrs.fields(config)}
    out["", ""] = {"name": "x", "description": "", "seed": 0, "plugins": []}
    return out


def _default(field: attrs.Attribute) -> Any:
    default = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        default = default.factory()
    return list(default) if isinstance(default, tuple) else default


OPTIONS = _options()


def options_of(table: tuple[str, ...], node: dict) -> dict[str, Any]:
    """The options the table ``node`` at ``table`` may hold, with their defaults."""
    if not table:
        return OPTIONS["", ""]
    if len(table) == 1 and table[0] in CORE_TABLES:
        return OPTIONS[table[0], ""]
    if len(table) == 2 and table[0] in MULTI_KINDS:
        return OPTIONS.get((MULTI_KINDS[table[0]], str(node.get("type", table[1]))), {})
    if len(table) == 1 and table[0] in SINGLE_KINDS:
        name = node.get("type", DEFAULT_TYPES.get(table[0]))
        return OPTIONS.get((table[0], str(name)), {})
    return {}


def targets(data: dict) -> list[tuple[tuple[str, ...], str, Any]]:
    """Every (table path, key, current value or default) a mutation may aim at: the keys a
    table holds, the options it could hold, and an unknown one."""
    out = []
    stack: list[tuple[tuple[str, ...], dict]] = [((), data)]
    while stack:
        table, node = stack.pop()
        known = options_of(table, node)
        for key in sorted({*node, *known, "extra"}):
            out.append((table, key, node.get(key, known.get(key))))
            if isinstance(node.get(key), dict):
                stack.append(((*table, key), node[key]))
    return out


def value_for(draw: st.DrawFn, path: tuple[str, ...], old: Any) -> Any:
    """A new value: mostly of the old one's type (out of range, other words), else retyped;
    a scalar or an empty table where a table was."""
    if slow(path) or (path[-1] == "type" and old == "digits"):
        # Never a long run, nor data that reads files: invalid, tiny or nonsense values.
        return draw(st.sampled_from([-1, 0, 2**63, *SLOW.get((path[0], path[-1]), []), 0.5, "x"]))
    same = {bool: OTHERS[:2], int: INTS, float: FLOATS, str: WORDS, list: OTHERS[2:6]}
    pools = [p for t, p in same.items() if isinstance(old, t)][:1]
    anything = st.sampled_from([*INTS, *FLOATS, *WORDS, *OTHERS])
    if isinstance(old, dict):
        return draw(st.one_of(anything, st.just({})))
    if pools and draw(st.integers(0, 2)):
        return draw(st.sampled_from(pools[0]))
    return draw(anything)


@st.composite
def mutants(draw: st.DrawFn) -> dict[str, Any]:
    """A base recipe with one or two mutations: set (an existing key, or an option the
    table lacks, or an unknown key), delete, or rename a key."""
    data = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 2))):
        table, key, old = draw(st.sampled_from(targets(data)))
        node = data
        for part in table:
            node = node[part]
        action = draw(st.sampled_from(["set", "set", "set", "delete", "rename"]))
        if action == "set":
            node[key] = value_for(draw, (*table, key), old)
        elif key in node and action == "delete":
            del node[key]
        elif key in node:  # rename: a typo, another case, or a sibling's name
            choices = [key + "s", key[:-1] or "k", key.upper(), key.replace("_", "-"), *node]
            new = draw(st.sampled_from(choices))
            if not (slow((*table, new)) or new == "type"):  # unbounded values stay put
                node[new] = node.pop(key)
    return data


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """Exit status and stderr lines of one command; fails on an escaping exception."""
    try:
        status = main(args)
    except SystemExit as exc:  # argparse's usage errors
        status = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # a traceback: a bug, whatever the recipe holds
        pytest.fail(f"denoisekit {' '.join(args)} raised:\n{traceback.format_exc()}")
    err = capsys.readouterr().err
    return status, err.splitlines()


def check_agrees_with_train(data: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        recipe = Path(folder) / "mutant.toml"
        recipe.write_text(tomli_w.dumps(data), encoding="utf-8")
        with single_thread():
            checked, check_err = run(["recipe", "check", str(recipe)], capsys)
            trained, train_err = run(["train", str(recipe), "--out", f"{folder}/run"], capsys)
    report = f"\nrecipe:\n{tomli_w.dumps(data)}\ncheck: {check_err}\ntrain: {train_err}"
    assert checked in (0, 2) and trained in (0, 2), report
    assert len(check_err) <= 2 and len(train_err) <= 2, report
    assert checked == trained, report
    if checked == 2:
        assert check_err[-1] == train_err[-1], report


_SETTINGS = {
    "deadline": None,
    "database": None,
    "derandomize": True,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}


@settings(max_examples=200, **_SETTINGS)
@given(data=mutants())
def test_recipe_check_says_what_train_says(data, capsys):
    check_agrees_with_train(data, capsys)


@pytest.mark.slow
@settings(max_examples=3000, **{**_SETTINGS, "derandomize": False})
@given(data=mutants())
def test_recipe_check_says_what_train_says_many(data, capsys):
    check_agrees_with_train(data, capsys)


@pytest.mark.parametrize("base", range(len(BASES)))
def test_the_bases_are_valid_and_train(base, capsys):
    """The mutation test means something only if the unmutated recipes pass both."""
    with tempfile.TemporaryDirectory() as folder:
        recipe = Path(folder) / "base.toml"
        recipe.write_text(tomli_w.dumps(BASES[base]), encoding="utf-8")
        with single_thread():
            assert run(["recipe", "check", str(recipe)], capsys) == (0, [])
            assert run(["train", str(recipe), "--out", f"{folder}/run"], capsys) == (0, [])


# --------------------------------------------------------------------------- non-finite floats

#: Float options where an infinity means something: (table, option) → the values allowed.
NON_FINITE_ALLOWED = {("sampler", "lambda_min"): [-math.inf]}  # no clipping (diffusers' default)
#: Options a component needs besides the one under test (none has a default).
REQUIRED = {("data", "image-folder"): {"path": "images"}}


def _float_options() -> list[tuple[str, str, str, Any]]:
    """(table, component type or "", option, default) of every float option: every
    registered component's and the core tables'."""
    registry = load_registry(autoload=False)
    out = []
    for entry in registry.entries():
        table = next((t for t, kind in MULTI_KINDS.items() if kind == entry.kind), entry.kind)
        for f in attrs.fields(entry.spec.config):
            if "float" in str(f.type):
                out.append((table, entry.name, f.name, _default(f)))
    for table, config in CORE_TABLES.items():
        out += [
            (table, "", f.name, _default(f)) for f in attrs.fields(config) if "float" in str(f.type)
        ]
    return out


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    ("table", "name", "option", "default"),
    _float_options(),
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_non_finite_float_option_is_refused_in_one_line(
    table, name, option, default, value, capsys
):
    """nan and ±inf in any float option (of a pair, the first element) is refused naming the
    key, unless :data:`NON_FINITE_ALLOWED` says the value means something there."""
    data = copy.deepcopy(BASES[2])
    node = {**REQUIRED.get((table, name), {}), option: value}
    if isinstance(default, list):
        node[option] = [value, *default[1:]]
    if table in MULTI_KINDS:
        data.setdefault(table, {})[name] = node
        key = f"{table}.{name}.{option}"
    else:
        base = data.get(table, {})
        same = not name or base.get("type", DEFAULT_TYPES.get(table)) == name
        data[table] = {**(base if same else {}), **({"type": name} if name else {}), **node}
        key = f"{table}.{option}"
    with tempfile.TemporaryDirectory() as folder:
        recipe = Path(folder) / "nonfinite.toml"
        recipe.write_text(tomli_w.dumps(data), encoding="utf-8")
        status, err = run(["recipe", "check", str(recipe)], capsys)
    if value in NON_FINITE_ALLOWED.get((table, option), []):
        assert status == 0, err
        return
    assert status == 2 and len(err) == 1, f"{key} = {value}: {err}"
    assert f": {key}: " in err[0], err
