"""TensorBoard logging (``[hooks.tensorboard]``), to ``<run>/tensorboard``.

What is written:

* every logged scalar (``loss``, ``lr``, ``grad_norm``, ``images_per_sec`` and whatever other
  hooks add, e.g. ``amp_scale``) as ``train/<name>``, at logging intervals;
* the loss per timestep range (of each step's last micro-batch): the training timesteps
  ``t`` in ``[0, T)`` are split into ``timestep_bins`` equal ranges (quartiles by default)
  and the mean per-sample loss of each range since the last log goes to
  ``loss_by_timestep/<lo>-<hi>`` (also added to the logged scalars, so ``metrics.jsonl``
  has it). The sums are accumulated on the device every step with ``index_add_``: no
  host sync outside logging intervals;
* the preview grids of ``[hooks.preview]`` as the image ``samples`` (``reconstructions``
  in an autoencoder run, which has no timesteps either: no per-timestep losses);
* the fully resolved recipe as the text ``recipe`` (at train start);
* the HParams tab entry at train end: the recipe's scalar options flattened to dotted keys
  (``optimizer.lr``, ``backbone.channel_mults``) and, as metrics, the ``train/...`` scalars
  of the last logging interval. It is written into the same event folder as the scalars,
  so the HParams tab links each run to its curves (``denoisekit compare`` puts variants in
  sibling folders of one log directory).

On resume the writer purges events past the resumed step, so curves do not fold back.

Recipe example::

    [hooks.tensorboard]
    timestep_bins = 4
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import torch

from denoisekit import CheckContext, ComponentSpec, Problem, hookimpl
from denoisekit.config import int_at_least, option
from denoisekit.hookspecs import Run

log = logging.getLogger(__name__)


@attrs.frozen(kw_only=True)
class TensorBoardConfig:
    """Options of ``[hooks.tensorboard]``."""

    timestep_bins: int = option(
        4,
        "timestep ranges for the per-timestep loss (4: quartiles of [0, T))",
        validator=int_at_least(1),
    )
    flush_secs: int = option(
        30,
        "seconds between flushes of the event file",
        validator=int_at_least(1),
    )
    hparams: bool = option(
        True,
        "write the recipe and final metrics to the HParams tab at the end",
        validator=attrs.validators.instance_of(bool),
    )


def scalar_tag(name: str) -> str:
    """The TensorBoard tag of a logged scalar: ``train/<name>`` unless it has a group."""
    return name if "/" in name else f"train/{name}"


def flatten_recipe(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested recipe data → ``{"optimizer.lr": 2e-4, ...}`` of HParams-compatible values.

    Lists become their string (``"[1, 2]"``); empty tables and lists of tables are dropped.
    """
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_recipe(value, name + "."))
        elif isinstance(value, bool | int | float | str):
            out[name] = value
        elif isinstance(value, list | tuple):
            out[name] = str(list(value))
    return out


class TensorBoardHook:
    """The run hook.

    Attributes:
        writer: the ``SummaryWriter`` (between train start and end).
        log_dir: ``<run>/tensorboard``.
    """

    #: Writes files or the console: rank 0 only under torchrun.
    rank_zero_only = True

    def __init__(self, config: TensorBoardConfig) -> None:
        self.config = config
        self.writer: Any = None
        self.log_dir: Path | None = None
        self._num_timesteps = 1
        self._loss_sum: torch.Tensor | None = None  # (bins,) on the device
        self._count: torch.Tensor | None = None
        self._bin_of_t: torch.Tensor | None = None  # (T,) bin index of each timestep
        self._last_scalars: dict[str, float] = {}
        self._reconstructions = False

    def bin_edges(self) -> list[tuple[int, int]]:
        """Inclusive timestep ranges ``(lo, hi)`` of the bins."""
        T, k = self._num_timesteps, self.config.timestep_bins
        edges = [(i * T + k - 1) // k for i in range(k + 1)]  # first t of bin i: ceil(i T / k)
        return [(edges[i], edges[i + 1] - 1) for i in range(k)]

    # ------------------------------------------------------------------ hooks

    @hookimpl
    def denoisekit_configure(self, run: Run) -> None:
        self.log_dir = run.paths.tensorboard
        self._reconstructions = run.schedule is None  # an autoencoder run (docs/latent.md)
        if run.schedule is None:
            return
        self._num_timesteps = int(run.schedule.num_timesteps)
        bins = self.config.timestep_bins
        self._loss_sum = torch.zeros(bins, device=run.device)
        self._count = torch.zeros(bins, device=run.device)
        bin_of_t = torch.empty(self._num_timesteps, dtype=torch.long)
        for i, (lo, hi) in enumerate(self.bin_edges()):
            bin_of_t[lo : hi + 1] = i
        self._bin_of_t = bin_of_t.to(run.device)  # per step: one gather, no arithmetic

    @hookimpl
    def denoisekit_train_start(self, run: Run) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(
            log_dir=str(self.log_dir),
            purge_step=run.step + 1 if run.step > 0 else None,
            flush_secs=self.config.flush_secs,
        )
        # Markdown: a 4-space indent shows the TOML verbatim.
        toml = run.recipe.to_toml()
        text = "\n".join("    " + line for line in toml.splitlines())
        self.writer.add_text("recipe", text, global_step=run.step)

    @hookimpl
    def denoisekit_train_step_end(self, loss_per_sample: torch.Tensor, t: torch.Tensor) -> None:
        if self._loss_sum is None or self._count is None or self._bin_of_t is None:
            return
        bins = self._bin_of_t[t]  # the ranges of bin_edges(); on the device
        self._loss_sum.index_add_(0, bins, loss_per_sample.detach().float())
        self._count.index_add_(0, bins, torch.ones_like(loss_per_sample, dtype=self._count.dtype))

    @hookimpl(tryfirst=True, specname="denoisekit_log_scalars")
    def add_timestep_losses(self, scalars: dict[str, float]) -> None:
        """Add the per-timestep-range mean losses to the logged scalars (one host sync)."""
        if self._loss_sum is None or self._count is None or "loss" not in scalars:
            return  # only the loop's own log lines (evaluation logs its own scalars too)
        sums, counts = torch.stack([self._loss_sum, self._count]).tolist()
        for (lo, hi), s, n in zip(self.bin_edges(), sums, counts, strict=True):
            if n > 0:
                scalars[f"loss_by_timestep/{lo}-{hi}"] = s / n
        self._loss_sum.zero_()
        self._count.zero_()

    @hookimpl
    def denoisekit_log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        if self.writer is None:
            return
        for name, value in scalars.items():
            if isinstance(value, int | float):  # NaN too: TensorBoard shows it
                self.writer.add_scalar(scalar_tag(name), value, global_step=step)
        self._last_scalars.update(scalars)

    @hookimpl
    def denoisekit_preview_images(self, step: int, images: torch.Tensor) -> None:
        if self.writer is None:
            return
        from torchvision.utils import make_grid

        n = images.shape[0] // 2 if self._reconstructions else images.shape[0]
        nrow = max(1, math.ceil(math.sqrt(n))) * (2 if self._reconstructions else 1)
        grid = make_grid(images.detach().float(), nrow=nrow, normalize=True, value_range=(-1, 1))
        tag = "reconstructions" if self._reconstructions else "samples"
        self.writer.add_image(tag, grid, global_step=step)

    @hookimpl
    def denoisekit_train_end(self, run: Run) -> None:
        if self.writer is None:
            return
        if self.config.hparams:
            self.write_hparams(run)
        self._close()

    @hookimpl
    def denoisekit_train_error(self) -> None:
        try:
            self._close()
        except Exception:  # never mask the error that stopped training
            log.exception("tensorboard: closing the event file failed")

    # ------------------------------------------------------------------ helpers

    def write_hparams(self, run: Run) -> None:
        """The HParams entry: flattened recipe options and the last logged scalars."""
        from torch.utils.tensorboard.summary import hparams

        params = flatten_recipe(run.recipe.to_dict())
        metrics = {
            scalar_tag(name): float(value)
            for name, value in self._last_scalars.items()
            if isinstance(value, int | float) and math.isfinite(value)
        }
        # Into the same event folder as the scalars: the metrics are those series'
        # last values, so no extra scalars are written.
        for summary in hparams(params, metrics):
            self.writer.file_writer.add_summary(summary, run.step)

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None


def check_tensorboard(config: TensorBoardConfig, context: CheckContext) -> Iterator[Problem]:
    """Each timestep bin holds at least one timestep."""
    T = context.fact("schedule", "num_timesteps")
    if T is not None and config.timestep_bins > T:
        yield (
            "timestep_bins",
            f"{config.timestep_bins} bins for the schedule's {T} timesteps; set "
            f"{context.table}.timestep_bins to at most {T}",
        )


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    """Register ``tensorboard``."""
    return [
        ComponentSpec(
            kind="hook",
            name="tensorboard",
            config=TensorBoardConfig,
            build=TensorBoardHook,
            check=check_tensorboard,
            summary="TensorBoard scalars, per-timestep loss, preview images, recipe, HParams.",
        )
    ]
