"""Sample grids during training (``[hooks.preview]``).

Every ``every`` optimization steps (and at the end of training) the run draws
``num_images`` samples with its sampler and its sampling weights (the EMA where
``[hooks.ema]`` is on), from a fresh ``torch.Generator`` seeded with ``seed`` each time: every
preview starts from the same noise, so successive grids show the model changing, not the
noise. The generator lives on the CPU, so the grids are the same on any device.

For a class-conditional backbone the labels cycle through the classes (image ``i`` has
class ``i mod num_classes``) and the grid has one column per class (up to 16 classes).

In an autoencoder run (``run.sampler`` is None; docs/latent.md) the grid shows the first
``num_images`` training images, each followed by its reconstruction (``run.preview_pairs``),
two columns per pair.

The grid goes to ``<run>/samples/step-00001000.png`` and to the
``denoisekit_preview_images`` hook (the TensorBoard hook logs it).

Recipe example::

    [hooks.preview]
    every = 500
    num_images = 64
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import attrs
import torch

from denoisekit import CheckContext, ComponentSpec, Problem, hookimpl
from denoisekit.config import int_at_least, option, over_memory
from denoisekit.hookspecs import Run

log = logging.getLogger(__name__)


@attrs.frozen(kw_only=True)
class PreviewConfig:
    """Options of ``[hooks.preview]``."""

    every: int = option(
        500,
        "optimization steps between previews (one is also drawn at the end)",
        validator=int_at_least(1),
    )
    num_images: int = option(
        64,
        "images per preview",
        validator=int_at_least(1),
    )
    seed: int = option(0, "seed of the preview noise", validator=attrs.validators.instance_of(int))
    at_end: bool = option(
        True, "also draw a preview when training ends", validator=attrs.validators.instance_of(bool)
    )


def preview_file_name(step: int) -> str:
    """The file name of the preview grid at ``step``."""
    return f"step-{step:08d}.png"


class PreviewHook:
    """The run hook.

    Attributes:
        last_step: the step of the last preview drawn, or None.
    """

    #: Writes files or the console: rank 0 only under torchrun.
    rank_zero_only = True

    def __init__(self, config: PreviewConfig) -> None:
        self.config = config
        self.last_step: int | None = None

    def labels(self, run: Run) -> torch.Tensor | None:
        """The class labels of the preview images (None when unconditional)."""
        if not run.num_classes:
            return None
        return (torch.arange(self.config.num_images) % run.num_classes).to(run.device)

    def nrow(self, run: Run) -> int:
        """Images per grid row: one column per class, else a square-ish grid (of pairs, in
        an autoencoder run)."""
        if run.sampler is None:
            return 2 * max(1, math.ceil(math.sqrt(self.config.num_images)))
        num_classes = run.num_classes
        if num_classes and num_classes <= 16:
            return min(num_classes, self.config.num_images)
        return max(1, math.ceil(math.sqrt(self.config.num_images)))

    def draw(self, run: Run) -> torch.Tensor:
        """The preview images ``(N, C, H, W)`` in [-1, 1], from the fixed noise (in an
        autoencoder run: ``2 N``, image and reconstruction pairs)."""
        if run.sampler is None:
            return run.preview_pairs(self.config.num_images)
        generator = torch.Generator().manual_seed(self.config.seed)
        return run.sample(self.config.num_images, generator=generator, cond=self.labels(run))

    def preview(self, run: Run, step: int) -> Path:
        """Draw, save ``samples/step-N.png`` and call ``denoisekit_preview_images``."""
        images = self.draw(run)
        path = run.paths.samples / preview_file_name(step)
        run.save_grid(path, images.float(), nrow=self.nrow(run), padding=2)
        run.pm.hook.denoisekit_preview_images(run=run, step=step, images=images)
        self.last_step = step
        log.info("preview: wrote %s", path)
        return path

    @hookimpl
    def denoisekit_train_step_end(self, run: Run, step: int) -> None:
        if step % self.config.every == 0:
            self.preview(run, step)

    @hookimpl
    def denoisekit_train_end(self, run: Run) -> None:
        if self.config.at_end and self.last_step != run.step:
            self.preview(run, run.step)


def check_preview(config: PreviewConfig, context: CheckContext) -> Iterator[Problem]:
    """The ``num_images`` drawn at once fit in memory: at least ``x_t``, ``eps`` and ``x0``
    (float32) of each image."""
    shape = context.fact("data", "image_shape")
    if shape is None:
        return
    size = "×".join(map(str, shape))
    what = f"sampling {config.num_images} images of {size} at once"
    problem = over_memory(12 * math.prod(shape) * config.num_images, what)
    if problem is not None:
        yield "num_images", f"{problem}; lower {context.table}.num_images"


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    """Register ``preview``."""
    return [
        ComponentSpec(
            kind="hook",
            name="preview",
            config=PreviewConfig,
            build=PreviewHook,
            check=check_preview,
            summary="sample grids from fixed noise every N steps, saved as PNG.",
        )
    ]
