"""Stop training on a NaN or infinite loss (``[hooks.nan-guard]``).

Every ``every`` optimization steps the step's loss is checked with ``torch.isfinite``.
On CUDA each check is a host-device sync (the loop otherwise syncs only at logging
intervals); ``every = 1`` costs little for diffusion models, whose steps are long, and
raising ``every`` trades that for a later stop.

A non-finite loss raises :class:`denoisekit.errors.NonFiniteLossError` naming the step, the
last good checkpoint (from ``denoisekit_last_checkpoint``: the ``[hooks.checkpoint]`` hook
writes nothing for the bad step, so ``last.pt`` stays good) and what to change. The check
is a ``wrapper`` of ``denoisekit_train_step_end`` that runs before every other step-end
hook, so neither the EMA nor a checkpoint ever sees the bad step.

With float16 AMP (``[hooks.amp] dtype = "float16"``) an overflowing step is the loss
scaler's business: it skips the update and lowers the scale, so a non-finite loss on a step
the scaler skipped is tolerated, up to ``amp_max_skipped`` checks in a row.

Recipe example::

    [hooks.nan-guard]
    every = 1
"""

from __future__ import annotations

import logging
import math
from collections.abc import Generator
from typing import Any

import attrs
import torch

from denoisekit import ComponentSpec, hookimpl
from denoisekit.config import int_at_least, option
from denoisekit.errors import NonFiniteLossError
from denoisekit.hookspecs import Run

log = logging.getLogger(__name__)


@attrs.frozen(kw_only=True)
class NaNGuardConfig:
    """Options of ``[hooks.nan-guard]``."""

    every: int = option(
        1,
        "check the loss every this many steps (each check is a host sync on CUDA)",
        validator=int_at_least(1),
    )
    amp_max_skipped: int = option(
        20,
        "float16 AMP: non-finite losses the loss scaler may skip in a row before stopping",
        validator=int_at_least(0),
    )


class NaNGuardHook:
    """The run hook."""

    def __init__(self, config: NaNGuardConfig) -> None:
        self.config = config
        self.skipped_in_a_row = 0

    @hookimpl(wrapper=True, tryfirst=True)
    def denoisekit_train_step_end(
        self, run: Run, step: int, loss: torch.Tensor
    ) -> Generator[None, Any, Any]:
        if step % self.config.every == 0:
            self.check(run, step, loss)
        return (yield)

    def check(self, run: Run, step: int, loss: torch.Tensor) -> None:
        """Raise :class:`NonFiniteLossError` when ``loss`` is not finite (a host sync)."""
        if bool(torch.isfinite(loss).all()):
            self.skipped_in_a_row = 0
            return
        if run.optimizer_step_skipped():
            self.skipped_in_a_row += 1
            if self.skipped_in_a_row <= self.config.amp_max_skipped:
                return
        value = float(loss.detach().float().reshape(-1)[0])
        what = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        if self.skipped_in_a_row > self.config.amp_max_skipped:
            what += f" (the float16 loss scaler skipped {self.skipped_in_a_row} steps in a row)"
        clip = run.recipe.train.grad_clip
        advice = (
            "lower optimizer.lr or set train.grad_clip"
            if clip is None
            else f"lower optimizer.lr or train.grad_clip (now {clip})"
        )
        raise NonFiniteLossError(f"step {step}: loss is {what}; {_last_good(run)}; {advice}")


def _last_good(run: Run) -> str:
    if not run.is_main:  # under torchrun only rank 0 has the checkpoint hook
        return "rank 0 names the last good checkpoint"
    ask = run.pm.hook.denoisekit_last_checkpoint
    path = ask(run=run)
    if path is not None:
        return f"the last good checkpoint is {path}"
    if ask.get_hookimpls():  # a plugin writes checkpoints, none yet
        return "no checkpoint has been written yet"
    return "no checkpoints are written (add [hooks.checkpoint])"


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    """Register ``nan-guard``."""
    return [
        ComponentSpec(
            kind="hook",
            name="nan-guard",
            config=NaNGuardConfig,
            build=NaNGuardHook,
            summary="stop with a clear error on a NaN/inf loss (the last good checkpoint kept).",
        )
    ]
