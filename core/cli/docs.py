"""Generate the reference pages from the code: ``docs/recipes.md`` and ``docs/hooks.md``.

* The recipe reference comes from the config classes of the built-in components
  (:mod:`denoisekit.cli.recipe_reference`).
* The hook reference comes from :mod:`denoisekit.hookspecs`: signatures, the
  firstresult / historic flags, the docstrings, the core's default implementations and
  the built-in hook components implementing each hook.

Regenerate after changing a config class or a hook specification::

    python -m denoisekit.cli.docs            # writes docs/recipes.md and docs/hooks.md
    python -m denoisekit.cli.docs --check    # exit status 1 when a page is stale

``tests/test_docs.py`` fails when a committed page differs from what this module generates.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from denoisekit import hookspecs
from denoisekit.cli.recipe_reference import (
    HEADER,
    REGENERATE,
    recipe_reference,
    reference_registry,
    rst_to_md,
)
from denoisekit.engine.build import CoreDefaults, MetricsFile
from denoisekit.host.contract_checks import declared_product
from denoisekit.host.registry import Registry

PAGES: tuple[str, ...] = ("recipes.md", "hooks.md")


# --------------------------------------------------------------------------- hooks.md

#: Section titles of the banners in hookspecs.py (``# ----- registration``).
GROUP_TITLES: dict[str, str] = {
    "registration": "Registration hooks (the component plugin manager)",
    "run lifecycle": "Run lifecycle hooks (each run's own plugin manager)",
}

#: Descriptions of arguments whose hook docstring has no ``:param:`` line for them.
COMMON_ARGS: dict[str, str] = {
    "run": "the run, a [`denoisekit.hookspecs.Run`](#the-run)",
    "pluginmanager": "the component plugin manager",
    "loss": "the loss, a 0-dim tensor on the device",
    "step": "the number of optimization steps taken so far",
    "error": "the exception (a `KeyboardInterrupt` subclass for Ctrl-C and SIGTERM)",
    "state": "the merged hook state of the checkpoint (every hook's `{key: state}` dicts)",
}

_HOOKS_INTRO = """\
Hooks are how plugins take part in denoisekit. Every hook is declared in
`core/hookspecs.py` (`denoisekit.hookspecs`) and implemented with the `@denoisekit.hookimpl`
marker, on module-level functions (a plugin module) or on methods (a plugin object). See
[writing-a-plugin.md](writing-a-plugin.md) for complete plugins.

**Two plugin managers.** The *component* manager holds the built-in plugins, the
`denoisekit` entry points of installed packages and a recipe's `plugins = [...]`; it
answers the registration hooks. Each training run builds its own *run* manager: every
`[hooks.NAME]` table of the recipe builds a hook component, an object whose methods
implement the run lifecycle hooks, and registers it there beside the core's defaults.

**Calling conventions** (pluggy):

* Hooks are called with keyword arguments, and an implementation may take any subset of
  them (`def denoisekit_train_step_end(self, step)` is fine); misspelled hooks and unknown
  arguments are rejected when the plugin is registered.
* Without `firstresult`, every implementation runs and the results are collected in a
  list. With **firstresult**, the first non-`None` result wins and the rest are skipped:
  these are "override the default" hooks, and the core's own default implementation is
  marked `trylast` so that any plugin comes first.
* **historic** hooks are remembered: a plugin registered after the call still receives it.
* Order: implementations registered later run first; `@denoisekit.hookimpl(tryfirst=True)`
  or `trylast=True` move one to the front or the back. `wrapper=True` makes a generator
  implementation that runs around the others: `result = yield` (or `return (yield)`)
  hands over to them and receives their result or exception.

**One training run**, in order: `denoisekit_configure` (once, after every component is
built); `denoisekit_train_model` (once: the module the forward pass calls);
`denoisekit_train_start`; then per optimization step `denoisekit_train_forward`
and `denoisekit_backward` for each of `train.grad_accum` micro-batches,
`denoisekit_optimizer_step`, `denoisekit_train_step_end`, and every `train.log_every`
steps `denoisekit_log_scalars`; finally `denoisekit_train_end`, or
`denoisekit_train_error` when the loop stops on an exception or an interrupt.
`denoisekit_state_dict` and `denoisekit_load_state_dict` are called when a checkpoint is
written or loaded, `denoisekit_sampling_model` whenever the run samples,
`denoisekit_optimizer_step_skipped` when a hook meets a non-finite loss, and
`denoisekit_last_checkpoint` when the NaN guard names the last good checkpoint.
"""


def _hook_functions() -> list[tuple[str, Callable[..., Any]]]:
    """``(group title, spec function)`` in declaration order, grouped by the banners."""
    group = ""
    found = []
    for line in inspect.getsource(hookspecs).splitlines():
        banner = re.match(r"#\s*-{8,}\s*(.+?)\s*$", line)
        if banner:
            group = banner.group(1)
            continue
        match = re.match(r"def (denoisekit_\w+)\(", line)
        if match:
            found.append(
                (GROUP_TITLES.get(group, group.capitalize()), getattr(hookspecs, match[1]))
            )
    return found


def run_members() -> list[tuple[str, str]]:
    """``(member, one-line doc)`` of :class:`denoisekit.hookspecs.Run`, from its source:
    ``name: type  # doc`` attributes and ``def name(...) -> T: ...  # doc`` methods."""
    from denoisekit import hookspecs

    members = []
    lines = inspect.getsource(hookspecs.Run).splitlines()
    for i, line in enumerate(lines):
        attr = re.match(r"^    (\w+): (.+?)(?:  # (.*))?$", line)
        method = re.match(r"^    def (\w+)\((.*?)(?:\) -> (.+?): \.\.\.)?(?:  # (.*))?$", line)
        if attr:
            members.append((f"{attr[1]}: {attr[2]}", attr[3] or ""))
        elif method:
            name, doc = method[1], method[4] or ""
            sig = inspect.signature(getattr(hookspecs.Run, name))
            params = str(sig).replace("'", "").replace("(self, ", "(").replace("(self)", "()")
            members.append((f"{name}{params}", doc or _continued_comment(lines, i)))
    return members


def _continued_comment(lines: list[str], i: int) -> str:
    """The comment of a multi-line ``def`` (``def name(  # doc``)."""
    match = re.search(r"  # (.*)$", lines[i])
    return match[1] if match else ""


def _run_section() -> list[str]:
    from denoisekit import hookspecs

    doc = rst_to_md(inspect.getdoc(hookspecs.Run) or "")
    out = ["", "## The run", "", doc, ""]
    for member, text in run_members():
        out.append(f"- `{member}`" + (f": {rst_to_md(text)}" if text else ""))
    return out


def _signature(fn: Callable[..., Any]) -> str:
    sig = inspect.signature(fn)
    params = []
    for p in sig.parameters.values():
        ann = p.annotation
        params.append(p.name if ann is inspect.Parameter.empty else f"{p.name}: {ann}")
    ret = sig.return_annotation
    tail = "" if ret is inspect.Signature.empty else f" -> {ret}"
    return f"def {fn.__name__}({', '.join(params)}){tail}: ..."


def _parse_docstring(doc: str) -> tuple[list[str], dict[str, str], str, str]:
    """``(body lines, {param: text}, returns text, example code)`` of a hookspec docstring."""
    body: list[str] = []
    params: dict[str, str] = {}
    returns = ""
    example: list[str] = []
    current: str | None = None  # "param:<name>", "returns", "example"
    for line in doc.splitlines():
        param = re.match(r"^:param (\w+):\s*(.*)$", line)
        if param:
            current = f"param:{param[1]}"
            params[param[1]] = param[2]
        elif re.match(r"^:returns?:", line):
            current = "returns"
            returns = line.split(":", 2)[2].strip()
        elif line.strip() == "Example::":
            current = "example"
        elif current == "example":
            example.append(line)
        elif current and line.startswith(" ") and line.strip():
            if current == "returns":
                returns += " " + line.strip()
            else:
                name = current.split(":", 1)[1]
                params[name] += " " + line.strip()
        else:
            current = None
            body.append(line)
    return body, params, returns, textwrap.dedent("\n".join(example)).strip()


def _impl_markers(obj: Any) -> dict[str, dict[str, Any]]:
    """``{hook name: impl options}`` of the ``@denoisekit.hookimpl`` methods of a class."""
    marker = f"{hookspecs.PROJECT}_impl"
    found = {}
    for attr_name in dir(obj):
        opts = getattr(getattr(obj, attr_name, None), marker, None)
        if opts is not None:
            found[opts.get("specname") or attr_name] = opts
    return found


def _ordering(opts: dict[str, Any]) -> str:
    flags = [k for k in ("tryfirst", "trylast", "wrapper") if opts.get(k)]
    return f" ({', '.join(flags)})" if flags else ""


def hook_reference(registry: Registry | None = None) -> str:
    """The hook reference page (markdown)."""
    registry = registry if registry is not None else reference_registry()
    core = {
        name: (f"{cls.__name__}.{name}", opts)
        for cls in (CoreDefaults, MetricsFile)
        for name, opts in _impl_markers(cls).items()
    }
    builtin: dict[str, list[str]] = {}
    for entry in registry.entries("hook"):
        product = declared_product(entry.spec.build)
        for name, opts in _impl_markers(product).items() if product is not None else ():
            builtin.setdefault(name, []).append(f"`{entry.name}`{_ordering(opts)}")

    out = [
        HEADER.format(command=REGENERATE, source="core/hookspecs.py"),
        "",
        "# Hook reference",
        "",
        _HOOKS_INTRO.rstrip(),
        *_run_section(),
    ]
    current_group = None
    for group, fn in _hook_functions():
        if group != current_group:
            current_group = group
            out += ["", f"## {group}"]
        name = fn.__name__
        spec_opts = getattr(fn, "denoisekit_spec", {}) or {}
        body, params, returns, example = _parse_docstring(inspect.getdoc(fn) or "")
        out += ["", f"### `{name}`", "", "```python", _signature(fn), "```", ""]
        facts = [
            "**firstresult**: the first non-`None` result is used"
            if spec_opts.get("firstresult")
            else "every implementation is called; results are collected in a list",
        ]
        if spec_opts.get("historic"):
            facts.append("**historic**: plugins registered later still receive the call")
        if name in core:
            where, opts = core[name]
            facts.append(f"core default: `{where}`{_ordering(opts)}")
        if name in builtin:
            facts.append("built-in hook components: " + ", ".join(builtin[name]))
        out += [f"- {fact}" for fact in facts]
        text = rst_to_md("\n".join(body).strip())
        if text:
            out += ["", text]
        arg_names = [p for p in inspect.signature(fn).parameters]
        if arg_names:
            out += ["", "Arguments:", ""]
            for arg in arg_names:
                described = params.get(arg) or COMMON_ARGS.get(arg, "")
                out.append(f"- `{arg}`: {rst_to_md(described)}".rstrip(": "))
        if returns:
            out += ["", f"Returns: {rst_to_md(returns)}"]
        if example:
            out += ["", "Example:", "", "```python", example, "```"]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------- writing


def generate(registry: Registry | None = None) -> dict[str, str]:
    """``{page file name: content}`` of every generated page."""
    registry = registry if registry is not None else reference_registry()
    return {"recipes.md": recipe_reference(registry), "hooks.md": hook_reference(registry)}


def docs_folder() -> Path:
    """The repository's ``docs/`` folder (beside ``core/``, in a source checkout)."""
    return Path(__file__).resolve().parents[2] / "docs"


def stale_pages(folder: Path | str | None = None) -> list[str]:
    """The generated pages whose committed copy in ``folder`` differs (or is missing)."""
    folder = Path(folder) if folder is not None else docs_folder()
    stale = []
    for page, content in generate().items():
        path = folder / page
        if not path.is_file() or path.read_text(encoding="utf-8") != content:
            stale.append(page)
    return stale


def write_pages(folder: Path | str | None = None) -> list[Path]:
    """Write every generated page into ``folder``; returns the files that changed."""
    folder = Path(folder) if folder is not None else docs_folder()
    folder.mkdir(parents=True, exist_ok=True)
    changed = []
    for page, content in generate().items():
        path = folder / page
        if not path.is_file() or path.read_text(encoding="utf-8") != content:
            path.write_text(content, encoding="utf-8")
            changed.append(path)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m denoisekit.cli.docs [--check] [--out DIR]``."""
    parser = argparse.ArgumentParser(
        prog="python -m denoisekit.cli.docs",
        description="Regenerate docs/recipes.md and docs/hooks.md.",
    )
    parser.add_argument("--out", type=Path, help="the docs folder (default: the checkout's docs/)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a page is stale")
    args = parser.parse_args(argv)
    folder = args.out if args.out is not None else docs_folder()
    if args.check:
        stale = stale_pages(folder)
        for page in stale:
            print(f"{folder / page} is stale: run `{REGENERATE}`", file=sys.stderr)
        return 1 if stale else 0
    for path in write_pages(folder):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
