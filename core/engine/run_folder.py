"""The run folder, owned here: its layout, opening a stored run, and ``metrics.jsonl``.

* the layout, :class:`denoisekit.files.RunPaths` (in the API, so hooks and the host use
  it too; hooks see it as ``run.paths``): no other module spells a run folder's paths.
* :func:`open_run`: a run folder or checkpoint → :class:`StoredRun` (its checkpoint, the
  stored recipe with today's key names, the registry of its plugins under the trust the
  user gave, and the folder its relative paths are read from). Every command that opens a
  stored run (sample, eval, edit, compare ``--run``, export-diffusers, ``train.init_from``,
  an evaluation's reference) goes through it.
* :func:`append_metrics` (and the :class:`MetricsFile` hook): the one writer of
  ``metrics.jsonl``.

Relative paths of a stored recipe (``data.root = "data"``) are read from the folder of the
recipe that was trained, recorded in every checkpoint (``recipe_folder``: relative to the
run folder when inside it, else absolute), so a run folder can be moved and opened from
anywhere. Where that folder no longer exists (the run copied to another machine), or the
checkpoint predates the record, they are read from the run folder itself (a warning says
so); ``--set data.root=...`` points them elsewhere.

Trust: opening a run folder must not run its code. Weights load with
``weights_only=True``, and the stored recipe's ``plugins`` are imported only as installed
unless the user passes ``--trust-plugins`` (:attr:`StoredRun.trust_plugins`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from denoisekit import hookimpl
from denoisekit.errors import CheckpointError, OutputError, PluginLoadError
from denoisekit.files import RunPaths
from denoisekit.host.convert import PATH_KINDS, RENAMED_KEYS
from denoisekit.host.recipe import Origins, Recipe, apply_overrides, recipe_from_data
from denoisekit.host.registry import Registry, load_registry

log = logging.getLogger(__name__)

#: The checkpoint key recording the folder of the recipe that was trained.
RECIPE_FOLDER_KEY = "recipe_folder"


def find_checkpoint(path: Path | str) -> Path:
    """A checkpoint file, or a run folder's last checkpoint."""
    path = Path(path)
    if path.is_dir():
        paths = RunPaths(path)
        last = paths.last_checkpoint
        if not last.is_file():
            raise CheckpointError(
                f"{path}: no {paths.relative(last)} in this run folder (was [hooks.checkpoint] on?)"
            )
        return last
    if not path.exists():
        raise CheckpointError(f"{path}: no such run folder or checkpoint")
    return path


def recipe_folder_record(recipe_root: Path, run_root: Path) -> str:
    """What a checkpoint records as the recipe's folder: relative to the run folder when
    inside it (an imported run's recipe is its own), else absolute."""
    recipe_root, run_root = Path(recipe_root).resolve(), Path(run_root).resolve()
    if recipe_root == run_root or run_root in recipe_root.parents:
        return recipe_root.relative_to(run_root).as_posix()
    return str(recipe_root)


# --------------------------------------------------------------------------- a stored run


@attrs.frozen(eq=False)
class StoredRun:
    """A run folder (or checkpoint) opened by :func:`open_run`.

    Attributes:
        checkpoint: the checkpoint file (a run folder's last one).
        folder: the run folder (the checkpoint's folder for one outside a run folder).
        data: the stored recipe as TOML data, with today's key names.
        registry: the components of the stored recipe's plugins, loaded as trusted.
        trust_plugins: the user allowed the stored recipe's plugins from the run folder.
        recipe_folder: where the stored recipe's relative paths are read from.
    """

    checkpoint: Path
    folder: Path
    data: dict[str, Any]
    registry: Registry
    trust_plugins: bool
    recipe_folder: Path

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.folder)

    def recipe(
        self, overrides: Sequence[str] = (), *, device: str | None = None, check: bool = True
    ) -> Recipe:
        """The stored recipe with ``--set`` ``overrides`` (and ``--device``) applied."""
        import copy

        origins = Origins()
        data = apply_overrides(copy.deepcopy(self.data), overrides, origins)
        if device is not None:
            data.setdefault("train", {})["device"] = device
            origins.record({"device": device}, "--device", prefix="train")
        return recipe_from_data(
            data,
            self.registry,
            source=self.checkpoint,
            origins=origins,
            check=check,
            folder=self.recipe_folder,
        )

    def load_state(self, map_location: Any = "cpu") -> dict[str, Any]:
        """The whole checkpoint (``weights_only``)."""
        from denoisekit.engine.checkpoint import load_checkpoint

        return load_checkpoint(self.checkpoint, map_location)


def open_run(path: Path | str, *, trust_plugins: bool = False) -> StoredRun:
    """Open a run folder or checkpoint: the one way a command reads a stored run.

    Raises:
        CheckpointError: no checkpoint there, or one that holds no readable recipe.
        PluginLoadError: a stored plugin that is not installed, or would be imported from
            the run folder, without ``trust_plugins``; one line naming ``--trust-plugins``.
    """
    from denoisekit.engine.checkpoint import load_checkpoint

    checkpoint = find_checkpoint(path)
    state = load_checkpoint(checkpoint, mmap=True)  # the metadata; tensors stay on disk
    try:
        data = tomllib.loads(state["recipe"])
    except (KeyError, TypeError, tomllib.TOMLDecodeError) as exc:
        raise CheckpointError(f"{checkpoint}: holds no readable recipe ({exc})") from exc
    run_paths = RunPaths.of_checkpoint(checkpoint)
    folder = run_paths.root if run_paths is not None else checkpoint.parent
    data = migrated(data)
    return StoredRun(
        checkpoint=checkpoint,
        folder=folder,
        data=data,
        registry=_stored_registry(checkpoint, folder, data, trust_plugins),
        trust_plugins=trust_plugins,
        recipe_folder=_recipe_folder(state.get(RECIPE_FOLDER_KEY), folder, checkpoint),
    )


def _recipe_folder(record: Any, folder: Path, checkpoint: Path) -> Path:
    """The recorded recipe folder, resolved; the run folder where it is gone or unknown."""
    if isinstance(record, str):
        recorded = (folder / record).resolve()  # an absolute record stays itself
        if recorded.is_dir():
            return recorded
        log.warning(
            "%s: the recipe was trained in %s, which no longer exists: its relative paths "
            "are read from the run folder %s",
            checkpoint,
            recorded,
            folder,
        )
    return folder.resolve()


def migrated(data: dict[str, Any]) -> dict[str, Any]:
    """A stored recipe written before an option was renamed, with today's key names (a
    run folder stays usable; a recipe file the user edits is told to rename instead)."""
    for name, value in data.items():
        kind = PATH_KINDS.get(name)
        if kind is None or not isinstance(value, dict):
            continue
        tables = [value] if kind == name else [t for t in value.values() if isinstance(t, dict)]
        for table in tables:
            for old, new in RENAMED_KEYS.get(kind, {}).items():
                if old in table and new not in table:
                    table[new] = table.pop(old)
    return data


def _stored_registry(
    checkpoint: Path, folder: Path, data: dict[str, Any], trust_plugins: bool
) -> Registry:
    """The registry for a stored recipe: its ``plugins`` imported only as installed (on
    ``sys.path`` as it is, or through their entry point, not inside the run's folder),
    unless ``trust_plugins`` looks them up in the run folder, then the working directory."""
    folder = folder.resolve()
    names = data.get("plugins", [])
    search: list[Path] = []
    if trust_plugins:
        search = [folder, Path.cwd()]
    elif isinstance(names, list):
        for name in names:
            if isinstance(name, str):
                _check_installed(name, folder, checkpoint)
    return load_registry(plugins=names, search_paths=search)


def _check_installed(name: str, folder: Path, checkpoint: Path) -> None:
    """Raise unless plugin module ``name`` imports from outside ``folder`` as things are."""
    from denoisekit.host.plugin_manager import DISABLE_AUTOLOAD_ENV, ENTRY_POINT_GROUP

    if not os.environ.get(DISABLE_AUTOLOAD_ENV) and name in {
        ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    }:
        return  # loaded through its entry point: installed
    top = name.partition(".")[0]  # finding a submodule would import its package
    module = sys.modules.get(top)
    if module is not None:
        found, places = True, [getattr(module, "__file__", None), *getattr(module, "__path__", ())]
    else:
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            spec = None
        found = spec is not None
        places = [spec.origin, *(spec.submodule_search_locations or ())] if spec else []
    files = [Path(p).resolve() for p in places if p and os.path.exists(p)]
    if any(f == folder or folder in f.parents for f in files):
        raise PluginLoadError(
            f"{checkpoint}: the stored recipe's plugin {name!r} would be imported from the "
            f"run folder {folder}; pass --trust-plugins to run that code (only if you trust "
            "the folder), or install the plugin"
        )
    if not found:
        raise PluginLoadError(
            f"{checkpoint}: the stored recipe's plugin {name!r} is not installed; install it, "
            f"or pass --trust-plugins to import {top}.py from the run folder {folder} or the "
            "working directory (only if you trust them)"
        )


# --------------------------------------------------------------------------- metrics.jsonl


def append_metrics(path: Path, record: Mapping[str, Any]) -> Path:
    """Append one JSON line to a ``metrics.jsonl`` (one ``write`` of an ``O_APPEND`` file,
    so a trainer and an ``eval`` appending to one run interleave whole lines).

    Raises:
        OutputError: the file cannot be appended to (a full disk); one line.
    """
    line = (json.dumps(dict(record)) + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as exc:
        raise OutputError(f"{path}: cannot append ({exc.strerror or exc})") from exc
    return path


class MetricsFile:
    """The core's run hook appending every logged scalar dict to the run's metrics file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @hookimpl(trylast=True)
    def denoisekit_log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        append_metrics(self.path, {"step": step, **scalars})
