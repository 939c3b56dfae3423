"""Pictures for people: sample grids scaled up by whole factors, with labelled rows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from denoisekit.engine.image_files import to_uint8
from denoisekit.files import atomic_write

#: Small images are scaled up (nearest neighbour, by a whole factor) to at least this side.
MIN_CELL = 48
PAD = 2
#: Grey between and around images, so that white pixels (a mask's) stay visible.
BACKGROUND = 190


def scale_for(side: int, min_cell: int = MIN_CELL) -> int:
    """The whole factor that brings ``side`` pixels to at least ``min_cell``."""
    return max(1, -(-min_cell // side))


def image_row(images: torch.Tensor, scale: int) -> np.ndarray:
    """``(N, C, H, W)`` in [-1, 1] → one uint8 RGB strip ``(H·s, N·(W·s + PAD) - PAD, 3)``."""
    pixels = to_uint8(images)  # N, H, W, C
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, _ = pixels.shape
    strip = np.full((h, n * (w + PAD) - PAD, 3), BACKGROUND, np.uint8)
    for i in range(n):
        strip[:, i * (w + PAD) : i * (w + PAD) + w] = pixels[i]
    return strip


def labelled_rows(
    rows: Sequence[tuple[str, torch.Tensor]], *, min_cell: int = MIN_CELL
) -> np.ndarray:
    """One row per ``(label, images)``, the label written left of its images; uint8 RGB."""
    from PIL import Image, ImageDraw, ImageFont

    side = max(int(images.shape[-1]) for _, images in rows)
    scale = scale_for(side, min_cell)
    strips = [image_row(images, scale) for _, images in rows]
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max(int(probe.textlength(label, font=font)) for label, _ in rows) + 3 * PAD
    width = label_width + max(strip.shape[1] for strip in strips)
    height = sum(strip.shape[0] + PAD for strip in strips) + PAD
    canvas = Image.new("RGB", (width, height), (BACKGROUND,) * 3)
    draw = ImageDraw.Draw(canvas)
    top = PAD
    for (label, _), strip in zip(rows, strips, strict=True):
        canvas.paste(Image.fromarray(strip), (label_width, top))
        draw.text((PAD, top + strip.shape[0] // 2), label, fill="black", font=font, anchor="lm")
        top += strip.shape[0] + PAD
    return np.asarray(canvas).copy()


def save_labelled_rows(path: Path | str, rows: Sequence[tuple[str, torch.Tensor]]) -> None:
    """Write :func:`labelled_rows` as a PNG, atomically."""
    from PIL import Image

    with atomic_write(path) as handle:
        Image.fromarray(labelled_rows(rows)).save(handle, format="PNG")
