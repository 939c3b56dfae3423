"""Strict structuring of recipe tables into attrs configs, and cattrs' errors as
``(key path, message)`` pairs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs
import cattrs
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
)

from denoisekit.contracts import KIND_RECORDS, KINDS
from denoisekit.host.suggest import did_you_mean

#: TOML integers are signed 64-bit; larger ones cannot be stored or seeded with.
INT64_RANGE: tuple[int, int] = (-(2**63), 2**63 - 1)
#: Options renamed since a release, by kind: old key → new key. A table using the old key
#: is told to rename it where its config has the new key and not the old.
RENAMED_KEYS: dict[str, dict[str, str]] = {
    "schedule": {"timesteps": "num_timesteps"},
    "metric": {"timesteps": "steps"},  # nll
}
#: The first part of a key path (a kind, or the table of a kind holding many) → the kind.
PATH_KINDS: dict[str, str] = {k.table: k.name for k in KIND_RECORDS} | {k: k for k in KINDS}


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)

    def _int64(value: int) -> int:
        low, high = INT64_RANGE
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range: integers are 64-bit, -2**63 to 2**63 - 1")
        return value

    def _int(value: Any, _: type) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer, got {value!r}")
        return _int64(value)

    def _float(value: Any, _: type) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {value!r}")
        return float(_int64(value) if isinstance(value, int) else value)

    def _bool(value: Any, _: type) -> bool:
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value

    def _str(value: Any, _: type) -> str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return value

    conv.register_structure_hook(int, _int)
    conv.register_structure_hook(float, _float)
    conv.register_structure_hook(bool, _bool)
    conv.register_structure_hook(str, _str)
    return conv


#: The strict converter every recipe table goes through.
converter = _make_converter()


def structure_config(config_cls: type, table: Mapping[str, Any]) -> Any:
    """Structure a TOML table into a config class (raises cattrs' validation errors)."""
    return converter.structure(dict(table), config_cls)


def flatten_errors(exc: BaseException, path: str, cls: type | None) -> list[tuple[str, str]]:
    """Walk cattrs' exception groups into ``(key path, message)`` pairs."""
    out: list[tuple[str, str]] = []
    if isinstance(exc, IterableValidationError):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            out += flatten_errors(sub, f"{path}[{note.index}]", None)
        for sub in without:
            out += flatten_errors(sub, path, None)
    elif isinstance(exc, ClassValidationError):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            inner = _attrs_type(note.type)
            out += flatten_errors(sub, join_key(path, note.name), inner)
        for sub in without:
            out += flatten_errors(sub, path, exc.cl)
    elif isinstance(exc, ForbiddenExtraKeysError):
        fields = [f.name for f in attrs.fields(exc.cl)]
        renamed = RENAMED_KEYS.get(PATH_KINDS.get(path.split(".")[0], ""), {})
        for key in sorted(exc.extra_fields):
            new = renamed.get(key)
            if new in fields and key not in fields:
                out.append((join_key(path, key), f"renamed to {new}: rename the key"))
            else:
                out.append((join_key(path, key), f"unknown key{did_you_mean(key, fields)}"))
    elif isinstance(exc, KeyError):
        out.append((join_key(path, str(exc.args[0])), "required key missing"))
    else:
        out.append(_validator_error(exc, path, cls))
    return out


def _validator_error(exc: BaseException, path: str, cls: type | None) -> tuple[str, str]:
    """Validator messages survive, at the path of the field they name."""
    message = str(exc.args[0]) if exc.args else type(exc).__name__
    field_name = None
    if len(exc.args) > 1 and isinstance(exc.args[1], attrs.Attribute):
        field_name = exc.args[1].name
    else:
        match = re.match(r"^'(\w+)", message)
        if match:
            field_name = match.group(1)
    if cls is not None and field_name and field_name in attrs.fields_dict(cls):
        return join_key(path, field_name), message
    return path, message


def _attrs_type(tp: Any) -> type | None:
    return tp if isinstance(tp, type) and attrs.has(tp) else None


def join_key(path: str, key: str) -> str:
    """``path.key`` (``key`` alone at the top)."""
    return f"{path}.{key}" if path else key
