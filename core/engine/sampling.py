"""Sampling a trained run: per-image seeds, batches, and the files the field exchanges.

* :func:`load_trained` turns a run folder or a checkpoint into a sampling-only
  :class:`~denoisekit.engine.training.Run` with the trained (and EMA) weights.
* :func:`sample_images` draws N images in batches; image ``i`` comes from its own
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from denoisekit.denoiser import eval_mode
from denoisekit.engine import distributed
from denoisekit.engine.checkpoint import atomic_write, load_checkpoint
from denoisekit.errors import CheckpointError, PluginLoadError
from denoisekit.host.recipe import apply_overrides, recipe_from_data
from denoisekit.host.registry import Registry, load_registry
from denoisekit.images import to_uint8


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


def load_trained(
    path: Path | str,
    *,
    overrides: Sequence[str] = (),
    device: str | None = None,
    registry: Registry | None = None,
    with_data: bool = False,
    dist: distributed.DistContext | None = None,
    trust_plugins: bool = False,
) -> Any:
    """Build a run from a checkpoint's own recipe and load its weights (EMA included).

    Args:
        path: a run folder or a checkpoint file.
        overrides: ``--set`` overrides of the stored recipe (e.g. ``sampler.steps=20``);
            only sampling options make sense here: the weights are fixed.
        device: run on this device instead of the recipe's ``train.device``.
        registry: the registry to build from (default: built-ins, entry points and the
            recipe's plugins).
        with_data: also build the training data (evaluation against it).
        dist: this rank under torchrun (default: the initialized process group, if any):
            the run goes to its ``cuda:LOCAL_RANK``.
        trust_plugins: import the stored recipe's plugins from the run folder or the
            working directory (see :func:`stored_registry`).
    """
    from denoisekit.engine.training import build_run
    from denoisekit.host.recipe import Origins

    checkpoint = find_checkpoint(path)
    state = load_checkpoint(checkpoint)
    origins = Origins()
    data = apply_overrides(stored_recipe(checkpoint, state), overrides, origins)
    if device is not None:
        data.setdefault("train", {})["device"] = device
        origins.record({"device": device}, "--device", prefix="train")
    if registry is None:
        registry = stored_registry(checkpoint, data, trust_plugins=trust_plugins)
    recipe = recipe_from_data(data, registry, source=checkpoint, origins=origins)
    run_dir = _run_folder(checkpoint)
    out_dir = run_dir if run_dir is not None else checkpoint.parent
    run = build_run(recipe, out_dir=out_dir, registry=registry, with_data=with_data, dist=dist)
    run.load_state_dict(state, source=str(checkpoint), weights_only=True)
    return run


def stored_recipe(checkpoint: Path, state: dict[str, Any] | None = None) -> dict[str, Any]:
    """The recipe a checkpoint stores, as TOML data (``state``: the loaded checkpoint, if it
    is at hand; else only the file's metadata is read)."""
    import tomllib

    if state is None:
        state = load_checkpoint(checkpoint, mmap=True)
    try:
        return tomllib.loads(state["recipe"])
    except (KeyError, tomllib.TOMLDecodeError) as exc:
        raise CheckpointError(f"{checkpoint}: holds no readable recipe ({exc})") from exc


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
    folder = (_run_folder(checkpoint) or checkpoint.parent).resolve()
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


def _run_folder(checkpoint: Path) -> Path | None:
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
    """Draw ``n`` images in [-1, 1] (on the CPU), in batches, with per-image seeds.

    Returns the images ``(N, C, H, W)`` and the labels used (class-conditional models
    get ``labels``, by default cycling through the classes), or ``None``.

    With ``dist`` of several ranks (every rank must call this, with the same arguments),
    rank ``r`` draws images ``[N r / W, N (r + 1) / W)`` in batches of ``batch_size`` and
    rank 0 gathers them all: the same images as one process draws (bit for bit on the
    CPU; on GPUs as far as the kernels do not depend on the batch size). Other ranks
    get an empty ``(0, C, H, W)`` tensor. ``progress`` counts this rank's images.
    """
    if n <= 0:
        raise ValueError(f"the number of images must be positive: {n}")
    sampler = sampler or run.sampler
    if labels is None:
        labels = class_labels(n, run.num_classes)
    if dist is not None and dist.enabled:
        lo, hi = distributed.shard_range(n, dist)
        mine = labels[lo:hi] if labels is not None else None
        images = (
            _sample_range(run, lo, hi, seed, batch_size, sampler, mine, callback, progress)
            if hi > lo
            else torch.zeros((0, *run.image_shape))
        )
        gathered = distributed.gather_rows(images, n, dist)
        if gathered is None:
            return torch.zeros((0, *run.image_shape)), labels
        return gathered, labels
    return _sample_range(run, 0, n, seed, batch_size, sampler, labels, callback, progress), labels


def _sample_range(
    run: Any,
    lo: int,
    hi: int,
    seed: int,
    batch_size: int,
    sampler: Any,
    labels: torch.Tensor | None,
    callback: Callable[[dict[str, Any]], None] | None,
    progress: Callable[[int], None] | None,
) -> torch.Tensor:
    """Images ``lo .. hi - 1`` (``labels`` are theirs), on the CPU."""
    denoiser = run.sampling_denoiser()
    out = []
    with eval_mode(denoiser.model):
        for start in range(0, hi - lo, batch_size):
            count = min(batch_size, hi - lo - start)
            cond = labels[start : start + count].to(run.device) if labels is not None else None
            images = sampler.sample(
                denoiser,
                (count, *run.image_shape),
                generator=image_generators(seed, lo + start, count),
                device=run.device,
                cond=cond,
                callback=callback,
            )
            out.append(images.float().cpu())
            if progress is not None:
                progress(count)
    return torch.cat(out)


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
