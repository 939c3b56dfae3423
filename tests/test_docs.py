"""The docs: generated pages are current, match `denoisekit plugins`, and their examples run.

When a test here fails because a page is stale, regenerate it: ``python -m denoisekit.cli.docs``.
"""

from __future__ import annotations

import re
import shlex
import textwrap
import types
from pathlib import Path

import attrs
import pluggy
import pytest
import torch

import denoisekit
from denoisekit import hookspecs
from denoisekit.cli import build_parser, docs, recipe_reference
from denoisekit.cli.plugins import format_plugins, option_doc
from denoisekit.host.recipe import MULTI_KINDS, SINGLE_KINDS, TOP_KEYS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
STALE = "is stale: regenerate it with `python -m denoisekit.cli.docs`"


@pytest.fixture(scope="module")
def registry():
    return docs.reference_registry()


@pytest.fixture(scope="module")
def pages(registry):
    return docs.generate(registry)


@pytest.mark.parametrize("page", docs.PAGES)
def test_generated_page_is_current(pages, page):
    committed = (DOCS / page).read_text(encoding="utf-8")
    assert committed == pages[page], f"docs/{page} {STALE}"


def test_check_mode_reports_stale_pages(tmp_path, capsys):
    assert docs.main(["--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(docs.PAGES)
    assert docs.main(["--out", str(tmp_path), "--check"]) == 0
    page = tmp_path / "recipes.md"
    page.write_text(page.read_text().replace("| `steps` |", "| `stepz` |", 1))
    assert docs.main(["--out", str(tmp_path), "--check"]) == 1
    assert "recipes.md is stale" in capsys.readouterr().err
    assert docs.main(["--out", str(tmp_path)]) == 0  # rewrites only what changed
    assert "wrote" in capsys.readouterr().out and docs.stale_pages(tmp_path) == []


# --------------------------------------------------------------------------- recipes.md


def _unescape(cell: str) -> str:
    cell = cell.strip()
    if cell.startswith("`") and cell.endswith("`"):
        cell = cell[1:-1]
    return cell.replace("\\|", "|")


def _reference_rows(text: str) -> tuple[set[tuple[str, ...]], set[tuple[str, str]]]:
    """Parse recipes.md: option rows (kind, name, option, type, default, doc), components."""
    kinds = {f"[{k}]": k for k in SINGLE_KINDS}
    kinds.update({f"[{t}.NAME]": k for t, k in MULTI_KINDS.items()})
    rows, components = set(), set()
    kind = name = None
    for line in text.splitlines():
        if m := re.match(r"^## `(.+)`$", line):
            kind, name = kinds.get(m[1]), None
        elif m := re.match(r'^### `type = "(.+)"`$', line):
            name = m[1]
            components.add((kind, name))
        elif kind and name and line.startswith("| `"):
            cells = re.split(r"(?<!\\)\|", line)[1:-1]
            rows.add((kind, name, *(_unescape(c) for c in cells)))
    return rows, components


def _cli_rows(text: str) -> tuple[set[tuple[str, ...]], set[tuple[str, str]]]:
    """Parse `denoisekit plugins` output the same way."""
    rows, components = set(), set()
    kind = name = None
    for line in text.splitlines():
        if m := re.match(r"^(\w+):$", line):
            kind = m[1]
        elif m := re.match(r"^  (\S+)  ", line) or re.match(r"^  (\S+)$", line):
            name = m[1]
            components.add((kind, name))
        elif line.startswith("    provided by "):
            continue
        elif m := re.match(r"^    (\w+): (.+?) = (.+?)(?:  (.*))?$", line):
            rows.add((kind, name, m[1], m[2], m[3], m[4] or ""))
    return rows, components


def test_reference_lists_what_denoisekit_plugins_lists(registry, pages):
    ref_rows, ref_components = _reference_rows(pages["recipes.md"])
    cli_rows, cli_components = _cli_rows(format_plugins(registry))
    assert ref_components == cli_components == {(e.kind, e.name) for e in registry.entries()}
    assert ref_rows == cli_rows
    assert len(ref_rows) == sum(len(attrs.fields(e.spec.config)) for e in registry.entries())


def test_reference_covers_the_core_tables_and_every_top_level_key(pages):
    text = pages["recipes.md"]
    for table, config_cls in denoisekit.host.recipe.CORE_TABLES.items():
        assert f"## `[{table}]`" in text
        for field in attrs.fields(config_cls):
            assert f"| `{field.name}` |" in text
    tables = {*SINGLE_KINDS, *MULTI_KINDS, *denoisekit.host.recipe.CORE_TABLES}
    assert set(recipe_reference.TOP_LEVEL) == (set(TOP_KEYS) - tables) | {"extends"}


def test_every_builtin_option_has_a_one_line_doc(registry):
    missing = [
        f"{e.kind} {e.name}: {f.name}"
        for e in registry.entries()
        for f in attrs.fields(e.spec.config)
        if not option_doc(f).strip() or "\n" in option_doc(f)
    ]
    assert not missing, "options without a one-line doc (option(default, 'doc')): " + ", ".join(
        missing
    )


# --------------------------------------------------------------------------- hooks.md


def _hook_names() -> list[str]:
    return [n for n in dir(hookspecs) if n.startswith("denoisekit_")]


def test_every_hook_is_documented_with_its_signature_and_an_example(pages):
    text = pages["hooks.md"]
    sections = re.split(r"^### ", text, flags=re.M)[1:]
    documented = {re.match(r"`(\w+)`", s)[1]: s for s in sections}
    assert set(documented) == set(_hook_names())
    for name, section in documented.items():
        spec = getattr(hookspecs, name)
        for arg in spec.__code__.co_varnames[: spec.__code__.co_argcount]:
            assert f"- `{arg}`" in section, f"{name}: argument {arg} undocumented"
        assert "Example:" in section and "```python" in section, f"{name}: no example"
        flags = spec.denoisekit_spec
        assert ("**firstresult**" in section) == bool(flags["firstresult"]), name
        assert ("**historic**" in section) == bool(flags["historic"]), name


def _examples() -> dict[str, str]:
    out = {}
    for name in _hook_names():
        _, _, _, example = docs._parse_docstring(getattr(hookspecs, name).__doc__ or "")
        out[name] = textwrap.dedent(example)
    return out


@pytest.mark.parametrize("name", _hook_names())
def test_hook_example_registers_and_implements_its_hook(name):
    """Each example, executed, registers into a manager with the specs (names, arguments)."""
    code = _examples()[name]
    namespace: dict = {"denoisekit": denoisekit, "torch": torch, "copy": __import__("copy")}
    exec(compile(code, f"<example {name}>", "exec"), namespace)
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    implemented = set()
    module = types.SimpleNamespace(
        **{k: v for k, v in namespace.items() if callable(v) and hasattr(v, "denoisekit_impl")}
    )
    plugins = [module] + [
        v.__new__(v) for k, v in namespace.items() if isinstance(v, type) and k[0].isupper()
    ]
    for plugin in plugins:
        pm.register(plugin)  # raises on a misspelled argument
        implemented |= {caller.name for caller in pm.get_hookcallers(plugin) or []}
    pm.check_pending()  # raises on an unknown hook
    assert name in implemented


def test_every_hook_example_lives_in_its_hookspec_docstring():
    for name in _hook_names():
        _, _, _, example = docs._parse_docstring(getattr(hookspecs, name).__doc__ or "")
        assert example, f"{name}: no Example:: section in its docstring"
    assert not hasattr(docs, "HOOK_EXAMPLES")  # the generator holds no examples of its own


def test_the_run_protocol_is_documented_member_by_member(pages):
    text = pages["hooks.md"]
    members = docs.run_members()
    assert {"step: int", "loss: Loss", "lr_schedule: Any"} <= {m for m, _ in members}
    for member, _ in members:
        assert f"- `{member}`" in text, member


# --------------------------------------------------------------------------- guides


GUIDES = [
    "quickstart.md",
    "writing-a-plugin.md",
    "architecture.md",
    "errors-and-safety.md",
    "interop.md",
    "latent.md",
    "quality.md",
]


def _shell_commands(text: str) -> list[list[str]]:
    commands = []
    for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, flags=re.S):
        block = block.replace("\\\n", " ")  # continuation lines: one command
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("denoisekit "):
                commands.append(shlex.split(line)[1:])
    return commands


@pytest.mark.parametrize("guide", GUIDES)
def test_guide_commands_parse(guide):
    """Every `denoisekit ...` command shown in a guide is one the CLI accepts."""
    parser = build_parser()
    commands = _shell_commands((DOCS / guide).read_text(encoding="utf-8"))
    assert commands or guide == "architecture.md", f"{guide}: no commands found"
    for argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit as exc:  # argparse's way of rejecting (0: --version, --help)
            if exc.code != 0:
                command = f"denoisekit {shlex.join(argv)}"
                raise AssertionError(f"{guide}: `{command}` does not parse") from exc


@pytest.mark.parametrize("guide", GUIDES)
def test_guide_paths_exist(guide):
    text = (DOCS / guide).read_text(encoding="utf-8")
    paths = set(re.findall(r"`((?:examples|recipes|core|plugins|tests|docs)/[\w./-]+)`", text))
    missing = sorted(p for p in paths if not (ROOT / p.rstrip("/")).exists())
    assert not missing, f"{guide} names files that do not exist: {missing}"


def test_option_types_render_alike_before_and_after_attrs_resolves_them(registry):
    """cattrs resolves string annotations in place when it first structures a class;
    the generated reference must not depend on whether a test did that first."""
    import typing

    from denoisekit.cli.plugins import type_text

    for entry in registry.entries():
        cls = entry.spec.config
        resolved = typing.get_type_hints(cls)
        for field in attrs.fields(cls):
            written = cls.__annotations__.get(field.name, field.type)
            assert type_text(written) == type_text(resolved[field.name]), (
                f"{entry.kind}.{entry.name}.{field.name}"
            )
