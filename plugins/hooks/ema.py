"""Exponential moving average of the weights (``[hooks.ema]``).

Keeps a copy of the backbone whose parameters follow the trained ones slowly; sampling and
evaluation use it (this hook answers ``denoisekit_sampling_model``), as in DDPM (Ho et al.
2020, decay 0.9999) and most diffusion work since.

*Notation*: ``w`` the trained weights after optimization step ``k``, ``e`` the average,
``n`` the number of EMA updates made so far (before this one). Each update is

    e <- d_n e + (1 - d_n) w,    d_n = min(decay, (1 + n) / (10 + n))  with ``warmup``
                                 d_n = decay                            without,

the warm-up of TensorFlow's ``ExponentialMovingAverage(num_updates=...)``: early on the
average forgets its random initialization quickly (d_0 = 0.1, d_90 = 0.91, d_990 = 0.991).
Buffers (e.g. normalization statistics) are copied, not averaged.

``update_every = k`` updates on the steps divisible by k (``decay`` then applies per update,
not per step). Before ``start_step`` the average simply copies the weights (and ``n`` stays
0), so averaging starts from the weights at ``start_step``.

Recipe example::

    [hooks.ema]
    decay = 0.9999
    warmup = true
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import attrs
import torch
from torch import nn

from denoisekit import ComponentSpec, hookimpl
from denoisekit.config import int_at_least, option, unit_interval
from denoisekit.hookspecs import Run

log = logging.getLogger(__name__)


@attrs.frozen(kw_only=True)
class EMAConfig:
    """Options of ``[hooks.ema]``."""

    decay: float = option(0.9999, "EMA decay per update, in [0, 1]", validator=unit_interval)
    warmup: bool = option(
        True,
        "use decay_n = min(decay, (1 + n) / (10 + n)), n = updates so far",
        validator=attrs.validators.instance_of(bool),
    )
    update_every: int = option(
        1,
        "update the average every this many optimization steps",
        validator=int_at_least(1),
    )
    start_step: int = option(
        0,
        "copy the weights (no averaging) before this optimization step",
        validator=int_at_least(0),
    )


class EMAHook:
    """The run hook.

    Attributes:
        model: the averaged copy of ``run.model`` (eval mode, no gradients); set by
            ``denoisekit_configure``.
        num_updates: averaging updates made so far (``n`` in the module docstring).
    """

    def __init__(self, config: EMAConfig) -> None:
        self.config = config
        self.model: nn.Module | None = None
        self.num_updates = 0
        self._ema_params: list[torch.Tensor] = []
        self._params: list[torch.Tensor] = []
        self._ema_buffers: list[torch.Tensor] = []
        self._buffers: list[torch.Tensor] = []

    def decay_at(self, n: int) -> float:
        """``d_n``, the decay of update number ``n`` (0-based)."""
        if self.config.warmup:
            return min(self.config.decay, (1.0 + n) / (10.0 + n))
        return self.config.decay

    # ------------------------------------------------------------------ hooks

    @hookimpl
    def denoisekit_configure(self, run: Run) -> None:
        model = copy.deepcopy(run.model)
        model.eval()
        model.requires_grad_(False)
        self.model = model
        params = dict(run.model.named_parameters())
        buffers = dict(run.model.named_buffers())
        self._params, self._ema_params = [], []
        self._buffers, self._ema_buffers = [], []
        for name, p in model.named_parameters():
            # Float weights are averaged; anything else (rare) is copied like a buffer.
            if p.is_floating_point():
                self._ema_params.append(p)
                self._params.append(params[name])
            else:
                self._ema_buffers.append(p)
                self._buffers.append(params[name])
        for name, b in model.named_buffers():
            self._ema_buffers.append(b)
            self._buffers.append(buffers[name])

    @hookimpl(tryfirst=True)
    def denoisekit_train_step_end(self, run: Run, step: int) -> None:
        # tryfirst: previews and checkpoints of this step see the updated average.
        if step % self.config.update_every:
            return
        if step < self.config.start_step:
            self.copy_weights()
        else:
            self.update(self.decay_at(self.num_updates))
            self.num_updates += 1

    @hookimpl
    def denoisekit_sampling_model(self) -> nn.Module | None:
        return self.model

    @hookimpl
    def denoisekit_state_dict(self) -> dict[str, Any] | None:
        if self.model is None:
            return None
        return {"ema": {"model": self.model.state_dict(), "num_updates": self.num_updates}}

    @hookimpl
    def denoisekit_load_state_dict(self, state: dict[str, Any]) -> None:
        if self.model is None:
            return
        saved = state.get("ema")
        if saved is None:
            # A checkpoint from a run without EMA: start the average from its weights.
            log.warning("the checkpoint has no EMA weights; the EMA starts from its weights")
            self.copy_weights()
            self.num_updates = 0
            return
        self.model.load_state_dict(saved["model"])
        self.num_updates = int(saved["num_updates"])

    # ------------------------------------------------------------------ updates

    @torch.no_grad()
    def update(self, decay: float) -> None:
        """``e <- decay e + (1 - decay) w`` for every weight; buffers copied."""
        if self._ema_params:
            # lerp_(w, 1 - d): e + (1 - d) (w - e) = d e + (1 - d) w, one fused call.
            torch._foreach_lerp_(self._ema_params, self._params, 1.0 - decay)
        self._copy_buffers()

    @torch.no_grad()
    def copy_weights(self) -> None:
        """Set the average to the current weights."""
        if self._ema_params:
            torch._foreach_copy_(self._ema_params, self._params)
        self._copy_buffers()

    def _copy_buffers(self) -> None:
        if self._ema_buffers:
            torch._foreach_copy_(self._ema_buffers, self._buffers)


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    """Register ``ema``."""
    return [
        ComponentSpec(
            kind="hook",
            name="ema",
            config=EMAConfig,
            build=EMAHook,
            summary="exponential moving average of the weights, used for sampling.",
        )
    ]
