"""Sampling a trained run: per-image seeds, batches, and the files the field exchanges.

* :func:`sample_images` draws N images in batches (the host draws each batch's ``x_T``
  and calls the sampler, in :meth:`Run.sample`); image ``i`` comes from its own
  generator seeded by ``(seed, i)``, so it is the same whatever the batch size, and
  under torchrun whichever rank draws it (each rank draws a contiguous share, rank 0
  gathers them).
* :func:`save_npz` writes key ``arr_0``, uint8, N×H×W×C (and ``arr_1`` labels): the format
  that public FID evaluators read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from denoisekit.engine import distributed
from denoisekit.engine.image_files import to_uint8
from denoisekit.files import atomic_write


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
