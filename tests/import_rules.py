"""The import rule of docs/architecture.md, read from the source: what
tests/test_architecture.py checks (see its docstring for the rule).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core"
PLUGINS = ROOT / "plugins"
EXAMPLES = ROOT / "examples"

#: Which layers each layer may import (its own included).
MAY_IMPORT: dict[str, set[str]] = {
    "api": {"api"},
    "host": {"api", "host"},
    "engine": {"api", "host", "engine"},
    "cli": {"api", "host", "engine", "cli"},
    "testing": {"api", "host", "engine", "testing", "plugins"},
    "plugins": {"api", "plugins"},
    "examples": {"api"},
    "example tests": {"api", "testing"},
}
#: ``denoisekit.build`` (core/__init__.py) is the host's, loaded on first access.
EXCEPTIONS = {("denoisekit", "host")}


@attrs.frozen
class Import:
    source: str  # the importing module
    target: str  # the imported module (a package means its __init__)
    names: tuple[str, ...]  # names taken from it (``from target import a, b``)
    type_checking: bool
    line: int


def module_name(path: Path) -> str:
    if path.is_relative_to(CORE):
        parts = ["denoisekit", *path.relative_to(CORE).with_suffix("").parts]
    else:
        parts = ["denoisekit", "plugins", *path.relative_to(PLUGINS).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_files() -> dict[str, Path]:
    files = sorted(CORE.rglob("*.py")) + sorted(PLUGINS.rglob("*.py"))
    return {module_name(p): p for p in files if "__pycache__" not in p.parts}


MODULES = package_files()


def example_files() -> list[Path]:
    return sorted(p for p in EXAMPLES.rglob("*.py") if "__pycache__" not in p.parts)


def layer(module: str) -> str | None:
    """The layer of a ``denoisekit`` module (``None`` outside the package)."""
    parts = module.split(".")
    if parts[0] != "denoisekit":
        return None
    if len(parts) == 1 or parts[1] not in {"host", "engine", "cli", "testing", "plugins"}:
        return "cli" if module == "denoisekit.__main__" else "api"
    return parts[1]


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(module: str, path: Path) -> Iterator[Import]:
    """Every import of a ``denoisekit`` module in ``path`` (see the module docstring)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    guarded = type_checking_lines(tree)
    is_package = path.name == "__init__.py"
    docstrings = {
        id(body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and (body := node.body)
        and isinstance(body[0], ast.Expr)
    }
    for node in ast.walk(tree):
        found: list[tuple[str, tuple[str, ...]]] = []
        if isinstance(node, ast.Import):
            found = [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, is_package, node)
            names = tuple(alias.name for alias in node.names)
            submodules = [n for n in names if f"{target}.{n}" in MODULES]
            found = [(f"{target}.{n}", ()) for n in submodules]
            rest = tuple(n for n in names if n not in submodules)
            if rest or not submodules:
                found.append((target, rest))
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and "." in node.value  # not the project's name, "denoisekit"
            and node.value in MODULES
            and not node.value.startswith("denoisekit.plugins")  # plugins load by name
        ):
            found = [(node.value, ())]
        for target, names in found:
            if target.split(".")[0] == "denoisekit":
                line = node.lineno
                yield Import(module, target, names, line in guarded, line)


def private_attribute_uses(module: str, path: Path) -> Iterator[str]:
    """``alias._name`` where ``alias`` is a project module this one imported."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES and alias.asname:
                    aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, path.name == "__init__.py", node)
            for alias in node.names:
                if f"{target}.{alias.name}" in MODULES:
                    aliases[alias.asname or alias.name] = f"{target}.{alias.name}"
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and is_private(node.attr)
        ):
            yield f"private: {short(module)} uses {short(aliases[node.value.id])}.{node.attr}"


def short(module: str) -> str:
    return module.removeprefix("denoisekit.")


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def same_package_private_module(source: str, target: str) -> bool:
    """A ``_module`` is private to its package: its siblings may import from it."""
    package, _, last = target.rpartition(".")
    return is_private(last) and (source == package or source.startswith(package + "."))


def private_violations(imp: Import) -> Iterator[str]:
    if imp.target == imp.source:
        return
    for name in imp.names:
        if is_private(name):
            yield f"private: {short(imp.source)} imports {short(imp.target)}.{name}"
    if is_private(imp.target.rpartition(".")[2]) and not same_package_private_module(
        imp.source, imp.target
    ):
        yield f"private: {short(imp.source)} imports {short(imp.target)}"


def all_imports() -> list[Import]:
    return [imp for module, path in MODULES.items() for imp in imports_of(module, path)]


def layer_violations(imports: list[Import]) -> Iterator[str]:
    for imp in imports:
        source, target = layer(imp.source), layer(imp.target)
        if target is None or target in MAY_IMPORT[source] or (imp.source, target) in EXCEPTIONS:
            continue
        yield f"layer: {short(imp.source)} -> {short(imp.target)}"


def cycle_violations(imports: list[Import]) -> Iterator[str]:
    """Every import edge inside a strongly connected component (so fixing one can only
    remove entries)."""
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for imp in imports:
        if not imp.type_checking and imp.target in MODULES and imp.target != imp.source:
            graph[imp.source].add(imp.target)
    component = strongly_connected(graph)
    for source, targets in graph.items():
        for target in sorted(targets):
            if component[source] == component[target]:
                yield f"cycle: {short(source)} -> {short(target)}"


def strongly_connected(graph: dict[str, set[str]]) -> dict[str, int]:
    """Tarjan's algorithm (iterative): node -> the index of its component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    component: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component[member] = index[node]
                    if member == node:
                        break
    return component


def example_violations() -> Iterator[str]:
    for path in example_files():
        rel = path.relative_to(ROOT).as_posix()
        kind = "example tests" if "tests" in path.relative_to(EXAMPLES).parts else "examples"
        for imp in imports_of(rel, path):
            target = layer(imp.target)
            if target is not None and target not in MAY_IMPORT[kind]:
                yield f"layer: {rel} -> {short(imp.target)}"
            for name in imp.names:
                if is_private(name):
                    yield f"private: {rel} imports {short(imp.target)}.{name}"


def violations() -> set[str]:
    """Every breach of the import rule in the package and the examples."""
    imports = all_imports()
    found = set(layer_violations(imports))
    found.update(v for imp in imports for v in private_violations(imp))
    for module, path in MODULES.items():
        found.update(private_attribute_uses(module, path))
    found.update(cycle_violations(imports))
    found.update(example_violations())
    return found
