"""Mutated recipes: ``recipe check`` says what ``train`` says, in one line, never a traceback.

Hypothesis mutates small valid recipes (the tiny digits run, alone and with hooks) —
deleting, renaming and retyping keys, out-of-range values, tables where scalars belong and
scalars where tables belong — and feeds each mutant to ``denoisekit recipe check`` and to a
two-step ``denoisekit train``, in-process through :func:`denoisekit.cli.main`:

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
from denoisekit.recipe import DEFAULT_TYPES, MULTI_KINDS, SINGLE_KINDS, TrainConfig, deep_merge
from denoisekit.registry import default_registry
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
BASES = [copy.deepcopy(TINY_RECIPE), deep_merge(copy.deepcopy(TINY_RECIPE), HOOKS)]

#: Strings a mutant may hold: component names (of every kind, so types switch to siblings
#: and to other kinds' names), option values, and nonsense.
WORDS = [
    *("ddim", "ddpm", "cosine", "linear", "constant", "warmup-cosine", "adam", "adamw", "sgd"),
    *("mse", "unet", "digits", "ema", "checkpoint", "preview", "tensorboard", "evaluate"),
    *("auto", "cpu", "cuda", "cuda:0", "gpu", "mps", "eps", "x0", "v", "leading", "trailing"),
    *("linspace", "fixed_small", "fixed_large", "scale_shift", "log_snr", "test", "all"),
    *("", "nope", "Digits", " ddim", "1", "true", "a.b", "../up"),
]
#: Integers beyond what validation lets through: negative, zero, beyond 64 bits.
BAD_INTS = [-1, 0, -(2**63) - 1, 2**63, 2**64, 10**30]
#: Small integers: valid for most counts, cheap for all of them.
SMALL_INTS = [1, 2, 3, 4, 8, 16]
FLOATS = [-1.0, 0.0, 0.5, 1.0, 1.5, 1e-12, 1e300, -1e300, math.inf, -math.inf, math.nan]
#: (table, key) whose valid values must stay tiny (a long or slow run), with those values.
SLOW = {
    ("train", "steps"): [1, 2],
    ("train", "num_workers"): [0],
    ("train", "batch_size"): [1, 2, 8],
    ("hooks", "num_images"): [1, 2],
    ("hooks", "num_samples"): [2],
}


def slow(path: tuple[str, ...]) -> bool:
    return (path[0], path[-1]) in SLOW


scalars = st.one_of(
    st.sampled_from(WORDS),
    st.sampled_from(BAD_INTS + SMALL_INTS + [100, 101]),
    st.sampled_from(FLOATS),
    st.booleans(),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.sampled_from(["type", "steps", "x", "image_size"]), scalars, max_size=2),
)


def _options() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) → {option: default} of every built-in component, and the core tables."""
    registry = default_registry(autoload=False)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in registry.entries():
        fields = attrs.fields(entry.spec.config)
        out[entry.kind, entry.name] = {f.name: _default(f) for f in fields}
    out["train", ""] = {f.name: _default(f) for f in attrs.fields(TrainConfig)}
    out["", ""] = {"name": "x", "description": "", "seed": 0, "plugins": []}
    return out


def _default(field: attrs.Attribute) -> Any:
    default = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        default = default.factory()
    return list(default) if isinstance(default, tuple) else default


OPTIONS = _options()


def options_of(data: dict, path: tuple[str, ...]) -> dict[str, Any]:
    """The options the table at ``path`` may hold, with their defaults ({} if unknown)."""
    if not path:
        return OPTIONS["", ""]
    node = data
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return {}
    if path == ("train",):
        return OPTIONS["train", ""]
    if len(path) == 2 and path[0] in MULTI_KINDS:
        return OPTIONS.get((MULTI_KINDS[path[0]], str(node.get("type", path[1]))), {})
    if len(path) == 1 and path[0] in SINGLE_KINDS:
        return OPTIONS.get((path[0], str(node.get("type", DEFAULT_TYPES.get(path[0])))), {})
    return {}


def paths(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of a nested dict, tables included."""
    out = []
    for key, value in node.items():
        out.append((*prefix, key))
        if isinstance(value, dict):
            out += paths(value, (*prefix, key))
    return out


def parent(data: dict, path: tuple[str, ...]) -> dict:
    node = data
    for key in path[:-1]:
        node = node[key]
    return node


def replacement(draw: st.DrawFn, path: tuple[str, ...], old: Any) -> Any:
    """A new value for ``key``: retyped, out of range, a table or a scalar instead."""
    if slow(path) or (path[-1] == "type" and old == "digits"):
        # Never a long run, nor data that reads files: invalid, tiny or nonsense values.
        small = SLOW.get((path[0], path[-1]), [])
        return draw(
            st.one_of(
                st.sampled_from([*BAD_INTS, *small, *FLOATS[:2], *WORDS[-8:]]),
                st.booleans(),
                st.just({"x": 1}),
                st.just([1, 2]),
            )
        )
    if isinstance(old, dict):  # a scalar or an empty table where a table belongs
        return draw(st.one_of(scalars, st.just({}), st.lists(scalars, max_size=2)))
    if isinstance(old, bool):
        return draw(st.one_of(st.sampled_from([0, 1, "true", "yes"]), values))
    if isinstance(old, int):
        return draw(st.one_of(st.sampled_from(BAD_INTS + SMALL_INTS + [100, 101]), values))
    if isinstance(old, float):
        return draw(st.one_of(st.sampled_from(FLOATS), values))
    return draw(values)


@st.composite
def mutants(draw: st.DrawFn) -> dict[str, Any]:
    """A base recipe with one to three mutations."""
    data = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        all_paths = paths(data)
        if not all_paths:
            break
        path = draw(st.sampled_from(all_paths))
        node, key = parent(data, path), path[-1]
        action = draw(st.sampled_from(["delete", "replace", "replace", "rename", "add"]))
        if action == "delete":
            del node[key]
        elif action == "replace":
            node[key] = replacement(draw, path, node[key])
        elif action == "rename":
            siblings = [k for k in node if k != key] or ["x"]
            new = draw(
                st.sampled_from(
                    [key + "s", key[:-1] or "k", key.upper(), key.replace("_", "-"), *siblings]
                )
            )
            if slow((*path[:-1], new)) or new == "type":
                continue  # a rename onto these would carry an unbounded value
            node[new] = node.pop(key)
        else:  # an option the table can hold but does not, or an unknown one
            tables = [()] + [p for p in all_paths if isinstance(parent(data, p)[p[-1]], dict)]
            table = draw(st.sampled_from(tables))
            node = data
            for part in table:
                node = node[part]
            known = {k: v for k, v in options_of(data, table).items() if k not in node}
            key = draw(st.sampled_from([*known, "extra", "type"]))
            default = known.get(key)
            keep = default is not None and not slow((*table, key)) and draw(st.booleans())
            node[key] = default if keep else replacement(draw, (*table, key), default)
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


@settings(max_examples=120, **_SETTINGS)
@given(data=mutants())
def test_recipe_check_says_what_train_says(data, capsys):
    check_agrees_with_train(data, capsys)


@pytest.mark.slow
@settings(max_examples=2000, **{**_SETTINGS, "derandomize": False})
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
