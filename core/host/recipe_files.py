"""Reading recipe files: TOML, ``extends`` chains, ``--set`` overrides, and which file or
override set each key (:class:`Origins`, for error messages)."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from denoisekit.errors import RecipeError
from denoisekit.host.convert import join_key
from denoisekit.host.suggest import did_you_mean


class Origins:
    """Which file (or ``--set``) set each key path, for error messages."""

    def __init__(self) -> None:
        self._by_path: dict[str, str] = {}

    def record(self, data: Mapping[str, Any], origin: str, prefix: str = "") -> None:
        """Every key path of ``data`` (under ``prefix``) was set by ``origin``."""
        for key, value in data.items():
            path = join_key(prefix, key)
            self._by_path[path] = origin
            if isinstance(value, Mapping):
                self.record(value, origin, path)

    def set(self, path: str, origin: str) -> None:
        """The key path ``path`` was set by ``origin``."""
        self._by_path[path] = origin

    def update(self, other: Origins) -> None:
        """Take ``other``'s origins (later ones win)."""
        self._by_path.update(other._by_path)

    def of(self, path: str) -> str | None:
        """Who set ``path`` or the nearest table above it (None: nobody said)."""
        while path:
            if path in self._by_path:
                return self._by_path[path]
            path = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", path) if ("." in path or "[" in path) else ""
        return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        siblings = [p.name for p in path.parent.glob("*.toml")] if path.parent.is_dir() else []
        raise RecipeError(
            f"{path}: recipe file not found{did_you_mean(path.name, siblings)}"
        ) from None
    except IsADirectoryError:
        raise RecipeError(f"{path}: is a folder; give the recipe's .toml file") from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read recipe: {exc.strerror}") from None
    start = 3 if raw.startswith(b"\xef\xbb\xbf") else 0  # tolerate an editor's byte-order mark
    try:
        text = raw[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = start + exc.start
        line = raw.count(b"\n", 0, offset) + 1
        raise RecipeError(
            f"{path}: not UTF-8 text: byte 0x{raw[offset]:02x} at offset {offset} (line {line}); "
            "TOML files must be UTF-8, re-save it in that encoding"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: TOML syntax error: {exc}") from None


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``top`` over ``base``; tables merge key by key, anything else is replaced.

    A table whose ``type`` changes replaces the base table whole, so options of the old
    component do not leak into the new one.
    """
    out = dict(base)
    for key, value in top.items():
        old = out.get(key)
        if (
            isinstance(old, Mapping)
            and isinstance(value, Mapping)
            and not ("type" in value and value.get("type") != old.get("type"))
        ):
            out[key] = deep_merge(old, value)
        else:
            out[key] = value
    return out


def read_recipe_data(path: Path, _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], Origins]:
    """Read a recipe file and everything it ``extends``, merged (no validation)."""
    path = Path(path)
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, resolved))
        raise RecipeError(f"{path}: extends: cycle detected: {cycle}")
    data = _read_toml(path)
    extends = data.pop("extends", None)
    bases: list[str]
    if extends is None:
        bases = []
    elif isinstance(extends, str):
        bases = [extends]
    elif isinstance(extends, list) and all(isinstance(e, str) for e in extends):
        bases = list(extends)
    else:
        raise RecipeError(f"{path}: extends: expected a file name or a list of them")
    merged: dict[str, Any] = {}
    origins = Origins()
    for base in bases:
        base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        if not base_path.exists():
            raise RecipeError(
                f"{path}: extends: {base!r} not found (looked for {base_path}; paths are "
                "relative to the recipe's folder)"
            )
        base_data, base_origins = read_recipe_data(base_path, (*_chain, resolved))
        merged = deep_merge(merged, base_data)
        origins.update(base_origins)
    merged = deep_merge(merged, data)
    origins.record(data, str(path))
    return merged, origins


_KEY_RE = re.compile(r"^[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*$")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=VALUE`` (VALUE in TOML syntax; a bare word is a string)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not _KEY_RE.match(key):
        raise RecipeError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. --set sampler.steps=20")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if re.fullmatch(r"[\w./:+-]+", raw):
            value = raw  # convenience: --set sampler.type=ddim
        else:
            raise RecipeError(
                f"--set {text!r}: {raw!r} is not a TOML value (quote strings: key='a b')"
            ) from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], origins: Origins) -> dict:
    """Apply ``--set`` overrides over merged recipe data."""
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for i, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                where = ".".join(keys[: i + 1])
                raise RecipeError(f"--set {text!r}: {where} is not a table")
            node = child
        last = keys[-1]
        if last == "type" and isinstance(node.get("type"), str) and node["type"] != value:
            node.clear()  # a new component: the old one's options do not apply
        node[last] = value
        origins.set(".".join(keys), "--set")
    return data
