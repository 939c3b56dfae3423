"""Hook plugins import only the plugin API (``denoisekit`` and its root modules), exactly
as a third-party plugin would: never the engine, the host, the CLI or the testing kit."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import denoisekit
from denoisekit.plugins import hooks

API = {p.stem for p in Path(denoisekit.__file__).parent.glob("*.py")} - {"__init__", "__main__"}
HOOK_FILES = sorted(Path(hooks.__file__).parent.glob("*.py"))


def _imported(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):  # module level and inside functions alike
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _is_api(name: str) -> bool:
    parts = name.split(".")
    return parts[0] != "denoisekit" or len(parts) == 1 or (len(parts) == 2 and parts[1] in API)


@pytest.mark.parametrize("path", HOOK_FILES, ids=lambda p: p.name)
def test_hook_plugin_imports_only_the_api(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    outside = [name for name in _imported(tree) if not _is_api(name)]
    assert not outside, f"{path.name} imports {outside}; reach them through the typed Run"


def test_the_check_sees_a_violation() -> None:
    tree = ast.parse("def f():\n    from denoisekit.engine.checkpoint import save_checkpoint\n")
    assert [n for n in _imported(tree) if not _is_api(n)] == ["denoisekit.engine.checkpoint"]
    assert _is_api("denoisekit.hookspecs") and _is_api("torch.nn")
