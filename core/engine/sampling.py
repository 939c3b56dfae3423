"""Sampling a trained run: per-image seeds, batches, and the files the field exchanges.

* :func:`find_checkpoint`, :func:`stored_recipe`, :func:`stored_registry` read a run
  folder or a checkpoint (:func:`denoisekit.engine.build.load_trained` builds its run).
* :func:`sample_images` draws N images in batches (the host draws each batch's ``x_T``
  and calls the sampler, in :meth:`Run.sample`); image ``i`` comes from its own
  generator seeded by ``(seed, i)``, so it is the same whatever the batch size, and
  under torchrun whichever rank draws it (each rank draws a contiguous share, rank 0
  gathers them).
* :func:`save_npz` writes key ``arr_0``, uint8, N×H×W×C (and ``arr_1`` labels): the format
  that public FID evaluators read.

Trust: opening a run folder or checkpoint must not run its code. The weights load with
``weights_only=True``, and the stored recipe's ``plugins`` are imported only as installed
(found on ``sys.path`` as it is, outside the run's folder) unless the caller passes
``trust_plugins=True`` (``--trust-plugins``): see :func:`stored_registry`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from denoisekit.engine import distributed
from denoisekit.engine.checkpoint import atomic_write, load_checkpoint
from denoisekit.engine.image_files import to_uint8
from denoisekit.errors import CheckpointError, PluginLoadError
from denoisekit.host.convert import PATH_KINDS, RENAMED_KEYS
from denoisekit.host.registry import Registry, load_registry


def find_checkpoint(path: Path | str) -> Path:
    """A checkpoint file, or a run folder's ``checkpoints/last.pt``."""
    path = Path(path)
    if path.is_dir():
        last = path / "checkpoints" / "last.pt"
        if not last.is_file():
            raise CheckpointError(
                f"{path}: no checkpoints/last.pt in this run folder (was [hooks.checkpoint] on?)"
            )
        return last
    if not path.exists():
        raise CheckpointError(f"{path}: no such run folder or checkpoint")
    return path


def stored_recipe(checkpoint: Path, state: dict[str, Any] | None = None) -> dict[str, Any]:
    """The recipe a checkpoint stores, as TOML data (``state``: the loaded checkpoint, if it
    is at hand; else only the file's metadata is read)."""
    import tomllib

    if state is None:
        state = load_checkpoint(checkpoint, mmap=True)
    try:
        data = tomllib.loads(state["recipe"])
    except (KeyError, tomllib.TOMLDecodeError) as exc:
        raise CheckpointError(f"{checkpoint}: holds no readable recipe ({exc})") from exc
    return migrated(data)


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


def stored_registry(
    checkpoint: Path, data: dict[str, Any], *, trust_plugins: bool = False
) -> Registry:
    """The registry for a stored recipe (a run folder's or a checkpoint's).

    Its ``plugins`` are imported only as installed: found on ``sys.path`` as it is (or
    through their entry point), not inside the run's folder, so a run folder someone
    shared cannot run code when it is opened. ``trust_plugins`` looks them up in the run
    folder (or the checkpoint's folder), then the working directory, first.

    Raises:
        PluginLoadError: a plugin that is not installed, or would come from the run
            folder, without ``trust_plugins``; one line naming it and ``--trust-plugins``.
    """
    folder = (run_folder(checkpoint) or checkpoint.parent).resolve()
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


def run_folder(checkpoint: Path) -> Path | None:
    """The run folder of ``RUN/checkpoints/FILE.pt``; None for a checkpoint elsewhere."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None


def image_generators(
    seed: int, start: int, count: int, device: torch.device | str = "cpu"
) -> list[torch.Generator]:
    """One generator per image, image ``i`` seeded from ``(seed, i)`` (any int ``seed``)."""
    return [
        torch.Generator(device=device).manual_seed((seed * 1_000_003 + i) % 2**64)
        for i in range(start, start + count)
    ]


def class_labels(n: int, num_classes: int | None, start: int = 0) -> torch.Tensor | None:
    """Labels cycling through the classes (image ``i`` gets class ``i % num_classes``)."""
    if not num_classes:
        return None
    return torch.arange(start, start + n) % num_classes


@torch.no_grad()
def sample_images(
    run: Any,
    n: int,
    *,
    seed: int = 0,
    batch_size: int = 64,
    sampler: Any = None,
    labels: torch.Tensor | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    progress: Callable[[int], None] | None = None,
    dist: distributed.DistContext | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Draw ``n`` images in [-1, 1] (on the CPU), in batches, with per-image seeds: the one
    way the engine draws N images (each batch through :meth:`Run.sample`).

    Returns the images ``(N, C, H, W)`` and the labels used (class-conditional models
    get ``labels``, by default cycling through the classes), or ``None``.

    With ``dist`` of several ranks (every rank must call this, with the same arguments),
    rank ``r`` draws images ``[N r / W, N (r + 1) / W)`` in batches of ``batch_size`` and
    rank 0 gathers them all: the same images as one process draws (to float rounding: bit
    for bit where the kernels do not depend on the batch size or the thread split). Other ranks
    get an empty ``(0, C, H, W)`` tensor. ``progress`` counts this rank's images.
    """
    if n <= 0:
        raise ValueError(f"the number of images must be positive: {n}")
    if labels is None:
        labels = class_labels(n, run.num_classes)
    sharded = dist is not None and dist.enabled
    lo, hi = distributed.shard_range(n, dist) if sharded else (0, n)
    out = [torch.zeros((0, *run.image_shape))]
    for start in range(lo, hi, batch_size):
        count = min(batch_size, hi - start)
        cond = labels[start : start + count].to(run.device) if labels is not None else None
        generator = image_generators(seed, start, count)
        images = run.sample(
            count, generator=generator, sampler=sampler, cond=cond, callback=callback
        )
        out.append(images.float().cpu())
        if progress is not None:
            progress(count)
    images = torch.cat(out)
    if sharded:
        gathered = distributed.gather_rows(images, n, dist)
        images = torch.zeros((0, *run.image_shape)) if gathered is None else gathered
    return images, labels


def save_npz(path: Path | str, images: torch.Tensor, labels: torch.Tensor | None = None) -> Path:
    """Write ``arr_0`` (uint8 N×H×W×C) and, with labels, ``arr_1`` (int64 N)."""
    path = Path(path)
    arrays = [to_uint8(images)]
    if labels is not None:
        arrays.append(labels.cpu().numpy().astype(np.int64))
    with atomic_write(path) as handle:  # an interrupted write leaves no partial file
        np.savez(handle, *arrays)
    return path


def save_grid(
    path: Path | str, images: torch.Tensor, nrow: int | None = None, *, padding: int = 1
) -> Path:
    """A PNG grid of [-1, 1] images (``padding`` pixels between them), written atomically
    (the format follows the file's extension)."""
    from torchvision.utils import save_image

    path = Path(path)
    nrow = nrow or max(1, int(np.ceil(np.sqrt(images.shape[0]))))
    with atomic_write(path) as handle:
        save_image(
            images,
            handle,
            format=_image_format(path),
            nrow=nrow,
            normalize=True,
            value_range=(-1, 1),
            padding=padding,
        )
    return path


def _image_format(path: Path) -> str:
    """PIL's format for a file name's extension (PNG when it has none PIL knows)."""
    from PIL import Image

    return Image.registered_extensions().get(path.suffix.lower(), "PNG")


def save_trajectory(path: Path | str, frames: list[torch.Tensor], *, duration_ms: int = 80) -> Path:
    """An animated GIF of x0 estimates over the steps (each frame a grid), written
    atomically."""
    from PIL import Image
    from torchvision.utils import make_grid

    path = Path(path)
    pictures = []
    for frame in frames:
        nrow = max(1, int(np.ceil(np.sqrt(frame.shape[0]))))
        grid = make_grid(frame.float().clamp(-1, 1), nrow=nrow, padding=1, pad_value=-1)
        array = to_uint8(grid)
        if array.shape[2] == 1:
            array = array[:, :, 0]
        picture = Image.fromarray(array)
        scale = max(1, 256 // max(picture.size))
        pictures.append(
            picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
        )
    with atomic_write(path) as handle:
        pictures[0].save(
            handle, format="GIF", save_all=True, append_images=pictures[1:],
            duration=duration_ms, loop=0,
        )  # fmt: skip
    return path
