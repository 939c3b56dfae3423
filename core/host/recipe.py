"""TOML recipes → frozen attrs :class:`Recipe`, with errors that name the file and key path.

Loading happens in two phases. The TOML files are read and merged (``extends`` chains,
then ``--set`` overrides: :mod:`denoisekit.host.recipe_files`); the recipe's ``plugins``
build the registry; then each component table is structured
(:mod:`denoisekit.host.convert`) into the config class of the component its ``type``
names, and the whole recipe is checked (:mod:`denoisekit.host.recipe_checks`). Every
error becomes one :class:`RecipeError` line such as
``recipes/x.toml: backbone.chanels: unknown key (did you mean 'channels'?)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import tomli_w

from denoisekit.contracts import KIND_RECORDS
from denoisekit.errors import DenoisekitError, RecipeError, RegistryError
from denoisekit.host.convert import INT64_RANGE, converter, flatten_errors, structure_config
from denoisekit.host.core_tables import (
    AUTOENCODER_TABLES,
    CORE_TABLES,
    DEVICE_TYPES,
    DIFFUSION_TABLES,
    AutoencoderTrainingConfig,
    GuidanceConfig,
    InpaintingConfig,
    LatentConfig,
    TrainConfig,
)
from denoisekit.host.recipe_checks import check_recipe
from denoisekit.host.recipe_files import (
    Origins,
    apply_overrides,
    deep_merge,
    parse_override,
    read_recipe_data,
)
from denoisekit.host.registry import Registry, load_registry
from denoisekit.host.suggest import did_you_mean

__all__ = [
    "CORE_TABLES",
    "DEFAULT_TYPES",
    "DEVICE_TYPES",
    "DIFFUSION_KINDS",
    "INT64_RANGE",
    "MULTI_KINDS",
    "OPTIONAL_KINDS",
    "SINGLE_KINDS",
    "TOP_KEYS",
    "ComponentChoice",
    "GuidanceConfig",
    "InpaintingConfig",
    "LatentConfig",
    "Origins",
    "Recipe",
    "TrainConfig",
    "apply_overrides",
    "check_recipe",
    "deep_merge",
    "load_recipe",
    "parse_override",
    "read_recipe_data",
    "recipe_from_data",
    "structure_config",
]

#: Component tables with one component each, in build order.
SINGLE_KINDS: tuple[str, ...] = tuple(k.name for k in KIND_RECORDS if not k.many)
#: Tables of named components: ``[hooks.ema]``, ``[metrics.fd]``.
MULTI_KINDS: dict[str, str] = {k.table: k.name for k in KIND_RECORDS if k.many}
#: The type used when a recipe leaves a component table out (``data`` is required).
DEFAULT_TYPES: dict[str, str] = {k.name: k.default for k in KIND_RECORDS if k.default}
#: Tables a recipe may leave out, and then has no such component (``recipe.autoencoder``).
OPTIONAL_KINDS: tuple[str, ...] = tuple(k.name for k in KIND_RECORDS if k.optional)
#: The kinds of the diffusion model: an autoencoder recipe (an ``[autoencoder]`` table and
#: no ``[backbone]``) trains the autoencoder alone and has none of them (they are None).
DIFFUSION_KINDS: tuple[str, ...] = ("schedule", "backbone", "loss", "sampler")


@attrs.frozen(kw_only=True)
class ComponentChoice:
    """A component table: the registered ``type`` and its structured config."""

    type: str
    config: Any


@attrs.frozen(kw_only=True)
class Recipe:
    """A validated recipe: every component chosen and configured.

    The component fields are written out, one per :class:`~denoisekit.Kind` (its
    ``table``), so that ``recipe.sampler`` is a typed attribute; an import-time check
    keeps them in step with the Kind records (a new kind adds its field here).
    """

    name: str
    description: str = ""
    seed: int = 0
    plugins: tuple[str, ...] = ()
    data: ComponentChoice
    autoencoder: ComponentChoice | None = None
    schedule: ComponentChoice | None
    backbone: ComponentChoice | None
    loss: ComponentChoice | None
    optimizer: ComponentChoice
    lr_schedule: ComponentChoice
    sampler: ComponentChoice | None
    train: TrainConfig = attrs.field(factory=TrainConfig)
    guidance: GuidanceConfig = attrs.field(factory=GuidanceConfig)
    inpainting: InpaintingConfig = attrs.field(factory=InpaintingConfig)
    autoencoder_training: AutoencoderTrainingConfig = attrs.field(factory=AutoencoderTrainingConfig)
    latent: LatentConfig | None = None  # None: pixel space
    hooks: dict[str, ComponentChoice] = attrs.field(factory=dict)
    metrics: dict[str, ComponentChoice] = attrs.field(factory=dict)
    #: The file the recipe was read from (not part of equality).
    path: Path | None = attrs.field(default=None, eq=False)
    #: The folder relative paths are read from, where it is not ``path``'s (a stored recipe:
    #: the folder of the recipe that was trained). Not part of equality.
    folder: Path | None = attrs.field(default=None, eq=False)

    @property
    def trains_autoencoder(self) -> bool:
        """An autoencoder recipe: ``[autoencoder]`` and no ``[backbone]`` (docs/latent.md);
        its :data:`DIFFUSION_KINDS` are None and ``[autoencoder_training]`` applies."""
        return self.backbone is None

    @property
    def root(self) -> Path:
        """The folder the recipe's relative paths (data folders) are read from: ``folder``,
        else the recipe file's, else the working directory for a recipe built in code."""
        if self.folder is not None:
            return self.folder
        return self.path.parent.resolve() if self.path is not None else Path.cwd()

    def component(self, kind: str) -> ComponentChoice | None:
        """The choice of a single-component kind (``None``: an optional kind left out)."""
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
            if getattr(self, kind) is not None:
                out[kind] = _choice_to_dict(getattr(self, kind))
        skip = DIFFUSION_TABLES if self.trains_autoencoder else AUTOENCODER_TABLES
        for table in CORE_TABLES:
            # a diffusion table in an autoencoder recipe and the reverse are left out, and
            # so is an optional table the recipe left out
            if table not in skip and getattr(self, table) is not None:
                out[table] = _drop_none(converter.unstructure(getattr(self, table)))
        for table in MULTI_KINDS:
            choices = getattr(self, table)
            out[table] = {name: _choice_to_dict(c) for name, c in choices.items()}
        return out

    def to_toml(self) -> str:
        """The fully resolved recipe as TOML; loading it back gives an equal Recipe."""
        return tomli_w.dumps(self.to_dict())


def _choice_to_dict(choice: ComponentChoice) -> dict[str, Any]:
    return {"type": choice.type, **_drop_none(converter.unstructure(choice.config))}


def _drop_none(value: Any) -> Any:
    """TOML has no null: unset optional options are left out (they load back as None)."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_drop_none(v) for v in value]
    return value


def _check_fields() -> None:
    """The component fields of :class:`Recipe` are the Kind records' tables."""
    types = {f.name: f.type for f in attrs.fields(Recipe)}  # annotations, as strings
    for kind in KIND_RECORDS:
        wanted = "dict[str, ComponentChoice]" if kind.many else "ComponentChoice"
        wanted += " | None" if kind.optional or kind.name in DIFFUSION_KINDS else ""
        if types.get(kind.table) != wanted:
            raise TypeError(f"Recipe needs a field {kind.table}: {wanted} (the {kind.name} kind)")


_check_fields()

# --------------------------------------------------------------------------- loading

TOP_KEYS = ("name", "description", "seed", "plugins", *CORE_TABLES, *SINGLE_KINDS, *MULTI_KINDS)


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
        names = data.get("plugins", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise RecipeError(f"{path}: plugins: expected a list of module names")
        try:
            registry = load_registry(
                plugins=[*names, *plugins], search_paths=[path.parent.resolve()]
            )
        except RegistryError:
            raise
        except DenoisekitError as exc:
            raise RecipeError(f"{path}: plugins: {exc}") from exc
    return recipe_from_data(data, registry, source=path, origins=origins)


def recipe_from_data(
    data: Mapping[str, Any],
    registry: Registry,
    *,
    source: Path | None = None,
    origins: Origins | None = None,
    check: bool = True,
    folder: Path | None = None,
) -> Recipe:
    """Validate merged recipe data into a :class:`Recipe`.

    ``check``: also find what only the whole recipe shows (:func:`check_recipe`); off only
    for a recipe that serves as a description of its data alone. ``folder``: where its
    relative paths are read from, when not ``source``'s folder (:attr:`Recipe.folder`).
    """
    errors: list[tuple[str, str]] = []
    fields: dict[str, Any] = {}
    where = str(source) if source is not None else "<recipe>"

    for key in data:
        if key not in TOP_KEYS:
            errors.append((key, f"unknown key{did_you_mean(key, TOP_KEYS)}"))

    scalars = {"name": str, "description": str, "seed": int}
    for key, tp in scalars.items():
        if key in data:
            try:
                fields[key] = converter.structure(data[key], tp)
            except (TypeError, ValueError) as exc:
                errors.append((key, str(exc)))
    fields.setdefault("name", source.stem if source is not None else "run")
    plugins = data.get("plugins", [])
    if isinstance(plugins, list) and all(isinstance(p, str) for p in plugins):
        fields["plugins"] = tuple(plugins)
    else:
        errors.append(("plugins", "expected a list of module names"))

    autoencoder_recipe = "autoencoder" in data and "backbone" not in data
    for kind in SINGLE_KINDS:
        table = data.get(kind)
        if autoencoder_recipe and kind in DIFFUSION_KINDS:
            fields[kind] = None
            continue
        if table is None:
            if kind in OPTIONAL_KINDS:
                continue
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

    for table, config_cls in CORE_TABLES.items():
        if table not in data:
            continue
        try:
            if not isinstance(data[table], Mapping):
                raise TypeError("expected a table")
            fields[table] = structure_config(config_cls, data[table])
        except Exception as exc:
            errors += flatten_errors(exc, table, config_cls)
    errors += _stage_problems(data, autoencoder_recipe)

    if errors:
        raise RecipeError(_format_errors(where, errors, origins))
    recipe = Recipe(**fields, path=source, folder=folder)
    problems = check_recipe(recipe, registry) if check else []
    if problems:
        raise RecipeError(_format_errors(where, problems, origins))
    return recipe


def _stage_problems(data: Mapping[str, Any], autoencoder_recipe: bool) -> list[tuple[str, str]]:
    """The tables of the other kind of recipe: a diffusion recipe's in an autoencoder recipe
    (``[autoencoder]``, no ``[backbone]``), ``[autoencoder_training]`` in a diffusion one."""
    if not autoencoder_recipe:
        return [
            (table, "only an autoencoder recipe (an [autoencoder] table and no [backbone]) "
             "has it: remove it, or the [backbone] (docs/latent.md)")
            for table in AUTOENCODER_TABLES if table in data
        ]  # fmt: skip
    extra = [t for t in (*DIFFUSION_KINDS, *DIFFUSION_TABLES) if t in data and t != "backbone"]
    return [
        (table, "an autoencoder recipe (an [autoencoder] table and no [backbone]) trains no "
         f"diffusion model: remove [{table}] (docs/latent.md)")
        for table in extra
    ]  # fmt: skip


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
        errors += flatten_errors(exc, path, entry.spec.config)
        return None
    return ComponentChoice(type=name, config=config)


def _format_errors(where: str, errors: list[tuple[str, str]], origins: Origins | None) -> str:
    parts = []
    for path, message in errors:
        origin = origins.of(path) if origins is not None else None
        note = f" (set by {origin})" if origin is not None and origin != where else ""
        parts.append(f"{path}: {message}{note}")
    more = f" (and {len(parts) - 3} more)" if len(parts) > 3 else ""
    return f"{where}: " + "; ".join(parts[:3]) + more
