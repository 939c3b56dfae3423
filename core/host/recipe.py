"""TOML recipes → frozen attrs :class:`Recipe`, with errors that name the file and key path.

Loading happens in two phases. The TOML files are read and merged (``extends`` chains,
then ``--set`` overrides); the recipe's ``plugins`` build the plugin manager and the
registry; then each component table is structured by cattrs into the config class of the
component its ``type`` names. Every error becomes one :class:`RecipeError` line such as
``recipes/x.toml: backbone.chanels: unknown key (did you mean 'channels'?)``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import cattrs
import tomli_w
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
)

from denoisekit.config import option
from denoisekit.errors import DenoisekitError, RecipeError, RegistryError, exception_line
from denoisekit.host.registry import Registry
from denoisekit.host.suggest import did_you_mean

#: Component tables with one component each, in build order.
SINGLE_KINDS: tuple[str, ...] = (
    "data",
    "schedule",
    "backbone",
    "loss",
    "optimizer",
    "lr_schedule",
    "sampler",
)
#: Tables of named components: ``[hooks.ema]``, ``[metrics.fd]``.
MULTI_KINDS: dict[str, str] = {"hooks": "hook", "metrics": "metric"}
#: The type used when a recipe leaves a component table out (``data`` is required).
DEFAULT_TYPES: dict[str, str] = {
    "schedule": "cosine",
    "backbone": "unet",
    "loss": "mse",
    "optimizer": "adamw",
    "lr_schedule": "constant",
    "sampler": "ddim",
}


#: Device types a run can train and sample on (``train.device``, ``--device``).
DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda", "mps")
#: TOML integers are signed 64-bit; larger ones cannot be stored or seeded with.
INT64_RANGE: tuple[int, int] = (-(2**63), 2**63 - 1)


def _check_device(inst: Any, attribute: attrs.Attribute, value: str) -> None:
    if value == "auto":
        return
    import torch

    try:
        device_type = torch.device(value).type
    except (RuntimeError, ValueError, TypeError):
        device_type = None
    if device_type not in DEVICE_TYPES:
        raise ValueError(f"'{attribute.name}' must be auto, cpu, cuda, cuda:N or mps: {value!r}")


def _divides_batch_size(inst: Any, attribute: attrs.Attribute, value: int) -> None:
    if value > 0 and inst.batch_size % value:
        raise ValueError(f"'grad_accum' ({value}) must divide 'batch_size' ({inst.batch_size})")


@attrs.frozen(kw_only=True)
class TrainConfig:
    """The ``[train]`` table: options of the core training loop."""

    steps: int = option(1000, "optimization steps to train for", validator=attrs.validators.gt(0))
    batch_size: int = option(64, "images per optimization step", validator=attrs.validators.gt(0))
    grad_accum: int = option(
        1,
        "micro-batches per optimization step (batch_size must divide by it)",
        validator=[attrs.validators.gt(0), _divides_batch_size],
    )
    grad_clip: float | None = option(
        None,
        "clip the global gradient norm to this value (unset: no clipping)",
        validator=attrs.validators.optional(attrs.validators.gt(0)),
    )
    device: str = option(
        "auto",
        "'auto' (CUDA when available, else CPU), 'cpu', 'cuda', 'cuda:1', 'mps'",
        validator=_check_device,
    )
    num_workers: int = option(0, "DataLoader worker processes", validator=attrs.validators.ge(0))
    pin_memory: bool = option(True, "pin host memory for faster copies to CUDA (ignored on CPU)")
    drop_last: bool = option(True, "drop the last incomplete batch of each epoch")
    log_every: int = option(
        50,
        "steps between logged scalars (host syncs happen only then)",
        validator=attrs.validators.gt(0),
    )


@attrs.frozen(kw_only=True)
class ComponentChoice:
    """A component table: the registered ``type`` and its structured config."""

    type: str
    config: Any


@attrs.frozen(kw_only=True)
class Recipe:
    """A validated recipe: every component chosen and configured."""

    name: str
    description: str = ""
    seed: int = 0
    plugins: tuple[str, ...] = ()
    data: ComponentChoice
    schedule: ComponentChoice
    backbone: ComponentChoice
    loss: ComponentChoice
    optimizer: ComponentChoice
    lr_schedule: ComponentChoice
    sampler: ComponentChoice
    train: TrainConfig = attrs.field(factory=TrainConfig)
    hooks: dict[str, ComponentChoice] = attrs.field(factory=dict)
    metrics: dict[str, ComponentChoice] = attrs.field(factory=dict)
    #: The file the recipe was read from (not part of equality).
    path: Path | None = attrs.field(default=None, eq=False)

    @property
    def root(self) -> Path:
        """The folder the recipe's relative paths (data folders) are read from: the recipe
        file's, or the working directory for a recipe built in code."""
        return self.path.parent.resolve() if self.path is not None else Path.cwd()

    def component(self, kind: str) -> ComponentChoice:
        """The choice of a single-component kind."""
        return getattr(self, kind)

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved recipe as plain TOML-able data (every default filled in)."""
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "seed": self.seed,
            "plugins": list(self.plugins),
        }
        for kind in SINGLE_KINDS:
            out[kind] = _choice_to_dict(getattr(self, kind))
        out["train"] = _drop_none(_converter.unstructure(self.train))
        for table in MULTI_KINDS:
            choices = getattr(self, table)
            out[table] = {name: _choice_to_dict(c) for name, c in choices.items()}
        return out

    def to_toml(self) -> str:
        """The fully resolved recipe as TOML; loading it back gives an equal Recipe."""
        return tomli_w.dumps(self.to_dict())


def _choice_to_dict(choice: ComponentChoice) -> dict[str, Any]:
    return {"type": choice.type, **_drop_none(_converter.unstructure(choice.config))}


def _drop_none(value: Any) -> Any:
    """TOML has no null: unset optional options are left out (they load back as None)."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_drop_none(v) for v in value]
    return value


# --------------------------------------------------------------------------- strict structuring


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


_converter = _make_converter()


def structure_config(config_cls: type, table: Mapping[str, Any]) -> Any:
    """Structure a TOML table into a config class (raises cattrs' validation errors)."""
    return _converter.structure(dict(table), config_cls)


def _flatten_errors(exc: BaseException, path: str, cls: type | None) -> list[tuple[str, str]]:
    """Walk cattrs' exception groups into ``(key path, message)`` pairs."""
    out: list[tuple[str, str]] = []
    if isinstance(exc, IterableValidationError):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            out += _flatten_errors(sub, f"{path}[{note.index}]", None)
        for sub in without:
            out += _flatten_errors(sub, path, None)
    elif isinstance(exc, ClassValidationError):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            inner = _attrs_type(note.type)
            out += _flatten_errors(sub, _join(path, note.name), inner)
        for sub in without:
            out += _flatten_errors(sub, path, exc.cl)
    elif isinstance(exc, ForbiddenExtraKeysError):
        fields = [f.name for f in attrs.fields(exc.cl)]
        for key in sorted(exc.extra_fields):
            out.append((_join(path, key), f"unknown key{did_you_mean(key, fields)}"))
    elif isinstance(exc, KeyError):
        out.append((_join(path, str(exc.args[0])), "required key missing"))
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
        return _join(path, field_name), message
    return path, message


def _attrs_type(tp: Any) -> type | None:
    return tp if isinstance(tp, type) and attrs.has(tp) else None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --------------------------------------------------------------------------- reading files


class _Origins:
    """Which file (or ``--set``) set each key path, for error messages."""

    def __init__(self) -> None:
        self._by_path: dict[str, str] = {}

    def record(self, data: Mapping[str, Any], origin: str, prefix: str = "") -> None:
        for key, value in data.items():
            path = _join(prefix, key)
            self._by_path[path] = origin
            if isinstance(value, Mapping):
                self.record(value, origin, path)

    def of(self, path: str) -> str | None:
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


def read_recipe_data(path: Path, _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], _Origins]:
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
    origins = _Origins()
    for base in bases:
        base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        if not base_path.exists():
            raise RecipeError(
                f"{path}: extends: {base!r} not found (looked for {base_path}; paths are "
                "relative to the recipe's folder)"
            )
        base_data, base_origins = read_recipe_data(base_path, (*_chain, resolved))
        merged = deep_merge(merged, base_data)
        origins._by_path.update(base_origins._by_path)
    merged = deep_merge(merged, data)
    origins.record(data, str(path))
    return merged, origins


# --------------------------------------------------------------------------- overrides

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


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], origins: _Origins) -> dict:
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
        origins._by_path[".".join(keys)] = "--set"
    return data


# --------------------------------------------------------------------------- validation

_TOP_KEYS = ("name", "description", "seed", "plugins", "train", *SINGLE_KINDS, *MULTI_KINDS)


def load_recipe(
    path: Path | str,
    overrides: Sequence[str] = (),
    *,
    registry: Registry | None = None,
    plugins: Iterable[Any] = (),
) -> Recipe:
    """Read, merge, override and validate a recipe file.

    Args:
        path: the recipe file.
        overrides: ``--set`` strings, applied after ``extends``.
        registry: the registry to validate against; by default one is built from the
            built-in plugins, entry points and the recipe's own ``plugins``.
        plugins: extra plugin objects for the default registry (the Python API).

    Raises:
        RecipeError: one line naming the file and the key path.
    """
    path = Path(path)
    data, origins = read_recipe_data(path)
    data = apply_overrides(data, overrides, origins)
    if registry is None:
        from denoisekit.host.plugin_manager import get_plugin_manager

        names = data.get("plugins", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise RecipeError(f"{path}: plugins: expected a list of module names")
        try:
            pm = get_plugin_manager(
                plugins=[*names, *plugins], search_paths=[path.parent.resolve()]
            )
        except DenoisekitError as exc:
            raise RecipeError(f"{path}: plugins: {exc}") from exc
        registry = Registry.from_plugin_manager(pm)
    return recipe_from_data(data, registry, source=path, origins=origins)


def recipe_from_data(
    data: Mapping[str, Any],
    registry: Registry,
    *,
    source: Path | None = None,
    origins: _Origins | None = None,
    check: bool = True,
) -> Recipe:
    """Validate merged recipe data into a :class:`Recipe`.

    ``check``: also find what only the whole recipe shows (:func:`check_recipe`); off only
    for a recipe that serves as a description of its data alone.
    """
    errors: list[tuple[str, str]] = []
    fields: dict[str, Any] = {}
    where = str(source) if source is not None else "<recipe>"

    for key in data:
        if key not in _TOP_KEYS:
            errors.append((key, f"unknown key{did_you_mean(key, _TOP_KEYS)}"))

    scalars = {"name": str, "description": str, "seed": int}
    for key, tp in scalars.items():
        if key in data:
            try:
                fields[key] = _converter.structure(data[key], tp)
            except (TypeError, ValueError) as exc:
                errors.append((key, str(exc)))
    fields.setdefault("name", source.stem if source is not None else "run")
    plugins = data.get("plugins", [])
    if isinstance(plugins, list) and all(isinstance(p, str) for p in plugins):
        fields["plugins"] = tuple(plugins)
    else:
        errors.append(("plugins", "expected a list of module names"))

    for kind in SINGLE_KINDS:
        table = data.get(kind)
        if table is None:
            if kind not in DEFAULT_TYPES:
                errors.append((kind, f'missing table [{kind}] (add one with a type = "...")'))
                continue
            table = {"type": DEFAULT_TYPES[kind]}
        elif isinstance(table, Mapping) and "type" not in table and kind in DEFAULT_TYPES:
            table = {"type": DEFAULT_TYPES[kind], **table}
        choice = _structure_choice(registry, kind, kind, table, errors)
        if choice is not None:
            fields[kind] = choice

    for table_name, kind in MULTI_KINDS.items():
        tables = data.get(table_name, {})
        if not isinstance(tables, Mapping):
            errors.append((table_name, f"expected a table of [{table_name}.NAME] tables"))
            continue
        chosen = {}
        for name, table in tables.items():
            if not isinstance(table, Mapping):
                errors.append((f"{table_name}.{name}", "expected a table"))
                continue
            table = {"type": name, **table} if "type" not in table else table
            choice = _structure_choice(registry, kind, f"{table_name}.{name}", table, errors)
            if choice is not None:
                chosen[name] = choice
        fields[table_name] = chosen

    if "train" in data:
        try:
            train = data["train"]
            if not isinstance(train, Mapping):
                raise TypeError("expected a table")
            fields["train"] = structure_config(TrainConfig, train)
        except Exception as exc:
            errors += _flatten_errors(exc, "train", TrainConfig)

    if errors:
        raise RecipeError(_format_errors(where, errors, origins))
    recipe = Recipe(**fields, path=source)
    problems = check_recipe(recipe, registry) if check else []
    if problems:
        raise RecipeError(_format_errors(where, problems, origins))
    return recipe


# --------------------------------------------------------------------------- cross-field checks


def check_recipe(recipe: Recipe, registry: Registry) -> list[tuple[str, str]]:
    """The problems only the whole recipe shows, as ``(key path, message)`` pairs.

    The core checks ``train`` against the machine and the data; then every component's
    :attr:`~denoisekit.ComponentSpec.check` runs, in build order, with the facts the
    components state (:attr:`~denoisekit.ComponentSpec.facts`). :func:`recipe_from_data`
    calls this, so ``recipe check``, ``train``, ``sample`` and ``compare`` all stop here.

    Raises:
        RegistryError: a component's ``facts`` or ``check`` itself failed (a plugin bug;
            the message names the plugin).
    """
    from denoisekit.contracts import CheckContext

    choices = [(kind, kind, recipe.component(kind)) for kind in SINGLE_KINDS]
    for table_name, kind in MULTI_KINDS.items():
        choices += [(kind, f"{table_name}.{n}", c) for n, c in getattr(recipe, table_name).items()]
    facts: dict[str, dict[str, Any]] = {}
    for kind in SINGLE_KINDS:
        choice = recipe.component(kind)
        entry = registry.get(kind, choice.type)
        if entry.spec.facts is not None:
            stated = _call_plugin(entry, "facts", lambda e=entry, c=choice: e.spec.facts(c.config))
            facts[kind] = dict(stated or {})
    problems = _core_problems(recipe, facts)
    for kind, table, choice in choices:
        entry = registry.get(kind, choice.type)
        if entry.spec.check is None:
            continue
        context = CheckContext(recipe=recipe, facts=facts, table=table)
        found = _call_plugin(
            entry, "check", lambda e=entry, c=choice, x=context: list(e.spec.check(c.config, x))
        )
        problems += [(_join(table, key) if key else table, message) for key, message in found]
    return problems


def _call_plugin(entry: Any, what: str, call: Any) -> Any:
    try:
        return call()
    except DenoisekitError:
        raise
    except Exception as exc:
        raise RegistryError(
            f"{entry.label}: its {what} failed on this recipe: {exception_line(exc)}"
        ) from exc


def _core_problems(recipe: Recipe, facts: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str]]:
    """``train`` against the machine and the data's facts; the backbone against the data."""
    problems = _device_problems(recipe.train.device)
    data = facts.get("data", {})
    train = recipe.train
    num_images = data.get("num_images")
    micro = train.batch_size // train.grad_accum
    if num_images is not None and (num_images == 0 or (train.drop_last and num_images < micro)):
        message = (
            f"the data's training split has {num_images} images, fewer than one micro-batch "
            f"of {micro}; lower train.batch_size or set train.drop_last = false"
        )
        problems.append(("train.batch_size", message))
    shape = data.get("image_shape")
    if shape is None:
        return problems
    c, h, w = shape
    if h != w:
        message = f"the data gives {c}×{h}×{w} images; backbones take square ones: resize them"
        return [*problems, ("data", message)]
    cfg = recipe.backbone.config
    wanted = {k: getattr(cfg, k, None) for k in ("in_channels", "image_size")}
    for key, value in (("in_channels", c), ("image_size", h)):
        if wanted[key] is not None and wanted[key] != value:
            expects = f"{wanted['in_channels'] or c}×{wanted['image_size'] or h}"
            message = (
                f"the data gives {c}×{h}×{w} images but the backbone expects {expects}×"
                f"{wanted['image_size'] or h}; set backbone.{key} = {value} (or change the data)"
            )
            problems.append((f"backbone.{key}", message))
    return problems


def _device_problems(device: str) -> list[tuple[str, str]]:
    """A device the recipe names that this machine does not have."""
    if device == "auto":
        return []
    import os

    import torch

    parsed = torch.device(device)
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            return [("train.device", f"{device!r}: CUDA is not available; use 'auto' or 'cpu'")]
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count and "LOCAL_RANK" not in os.environ:
            return [("train.device", f"{device!r}: this machine has {count} CUDA device(s)")]
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        return [("train.device", f"{device!r}: MPS is not available; use 'auto' or 'cpu'")]
    return []


def _structure_choice(
    registry: Registry,
    kind: str,
    path: str,
    table: Any,
    errors: list[tuple[str, str]],
) -> ComponentChoice | None:
    if not isinstance(table, Mapping):
        errors.append((path, f'expected a table with type = "<{kind} name>"'))
        return None
    rest = dict(table)
    name = rest.pop("type", None)
    if not isinstance(name, str):
        known = ", ".join(registry.names(kind)) or "none registered"
        errors.append((f"{path}.type", f"missing: choose the {kind} ({known})"))
        return None
    try:
        entry = registry.get(kind, name)
    except DenoisekitError as exc:
        errors.append((f"{path}.type", str(exc)))
        return None
    try:
        config = structure_config(entry.spec.config, rest)
    except Exception as exc:
        errors += _flatten_errors(exc, path, entry.spec.config)
        return None
    return ComponentChoice(type=name, config=config)


def _format_errors(where: str, errors: list[tuple[str, str]], origins: _Origins | None) -> str:
    parts = []
    for path, message in errors:
        origin = origins.of(path) if origins is not None else None
        note = f" (set by {origin})" if origin is not None and origin != where else ""
        parts.append(f"{path}: {message}{note}")
    more = f" (and {len(parts) - 3} more)" if len(parts) > 3 else ""
    return f"{where}: " + "; ".join(parts[:3]) + more
