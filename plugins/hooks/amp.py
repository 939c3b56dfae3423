"""Automatic mixed precision (``[hooks.amp]``): autocast, and a GradScaler for float16.

The forward pass runs under ``torch.autocast(device_type, dtype)`` on the run's device
type (CPU or CUDA); the loss is computed in float32 outside it (the core casts the model
output). Parameters, gradients and the optimizer stay in float32.

* ``dtype = "auto"`` picks what pays on the device at hand: bfloat16 where the hardware
  computes it natively (a CPU with AVX-512 BF16 or AMX; a GPU with bfloat16 support),
  float16 + GradScaler on a GPU without bfloat16, and plain float32 (the hook does
  nothing) on a CPU that would only emulate bfloat16 — there it is 10-16× slower
  (docs/performance.md). The choice is logged (``denoisekit --debug train ...`` shows it).
* ``dtype = "bfloat16"`` (default) has float32's exponent range: no loss scaling is needed,
  and this hook only wraps the forward pass. It needs a GPU with bfloat16 support
  (Ampere or newer) or a CPU.
* ``dtype = "float16"`` overflows and underflows easily, so gradients go through a
  ``torch.amp.GradScaler``: the loss is multiplied by a scale before ``backward``, the
  gradients are unscaled before clipping (``train.grad_clip``) and the optimizer step, and a
  step whose gradients hold inf/NaN is skipped while the scale is halved (it doubles
  again after ``growth_interval`` clean steps). The scaler's state is checkpointed.
  Works on CUDA, and on CPU with torch >= 2.3.

Skipped steps are counted on the device (no extra host sync per step) and logged as
``amp_skipped_steps`` (since the start of the run, resumes included) beside ``amp_scale``.
The hook answers ``denoisekit_optimizer_step_skipped``, so that the NaN guard
(``[hooks.nan-guard]``) does not stop a run for a non-finite loss the scaler has already
skipped, and the checkpoint hook still writes that step.

Recipe example::

    [hooks.amp]
    dtype = "bfloat16"
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import Any

import attrs
import torch

from denoisekit import ComponentSpec, hookimpl
from denoisekit.config import int_at_least, option, positive_finite
from denoisekit.errors import DenoisekitError
from denoisekit.hookspecs import Run

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16}
CHOICES: tuple[str, ...] = ("auto", *DTYPES)


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 products in hardware (not emulated).

    CPUs: AVX-512 BF16 or AMX tiles (``torch.cpu`` probes, present since torch 2.1);
    CUDA: ``torch.cuda.is_bf16_supported()`` (Ampere or newer).
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def auto_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``dtype = "auto"`` picks on ``device`` (None: stay in float32)."""
    if native_bfloat16(device):
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else None


@attrs.frozen(kw_only=True)
class AMPConfig:
    """Options of ``[hooks.amp]``."""

    dtype: str = option(
        "bfloat16",
        "autocast dtype: bfloat16, float16 (adds a GradScaler), or auto (bfloat16 where the "
        "hardware has it natively, float16 on other GPUs, float32 on other CPUs)",
        validator=attrs.validators.in_(CHOICES),
    )
    init_scale: float = option(
        65536.0, "float16 only: the GradScaler's initial scale", validator=positive_finite
    )
    growth_interval: int = option(
        2000,
        "float16 only: clean steps before the scale doubles",
        validator=int_at_least(1),
    )


class AMPHook:
    """The run hook.

    Attributes:
        device_type: ``"cpu"`` or ``"cuda"`` (set by ``denoisekit_configure``).
        dtype: the autocast dtype (None: float32, the hook is idle; ``auto`` on a CPU
            without native bfloat16). ``auto`` is resolved by ``denoisekit_configure``.
        scaler: the ``torch.amp.GradScaler`` (float16), else None.
    """

    def __init__(self, config: AMPConfig) -> None:
        self.config = config
        self.dtype: torch.dtype | None = DTYPES.get(config.dtype)
        self.device_type = "cpu"
        self.scaler: torch.amp.GradScaler | None = None
        self._skipped: torch.Tensor | None = None  # skipped steps so far (device, float)
        self._last_found_inf: torch.Tensor | None = None  # the last step's, (device, float)

    def step_skipped(self) -> torch.Tensor | None:
        """Whether the scaler skipped the last optimizer step (0-dim bool tensor on the device).

        None with bfloat16 or before the first step. Reading it is a host sync.
        """
        if self._last_found_inf is None:
            return None
        return self._last_found_inf > 0

    # ------------------------------------------------------------------ hooks

    @hookimpl
    def denoisekit_optimizer_step_skipped(self, run: Run) -> torch.Tensor | None:
        return self.step_skipped()

    @hookimpl
    def denoisekit_configure(self, run: Run) -> None:
        self.device_type = run.device.type
        if self.config.dtype == "auto":
            self.dtype = auto_dtype(run.device)
            log.info("amp: dtype auto -> %s on %s", self.dtype or "float32", run.device)
            if self.dtype is None:
                return
        if not torch.amp.is_autocast_available(self.device_type):
            raise DenoisekitError(
                f"hooks.amp: autocast is not available on device {str(run.device)!r}; remove "
                "[hooks.amp] or train on CPU or CUDA"
            )
        if (
            self.dtype is torch.bfloat16
            and self.device_type == "cuda"
            and not torch.cuda.is_bf16_supported()
        ):
            raise DenoisekitError(
                "hooks.amp: this GPU does not support bfloat16; set hooks.amp.dtype = 'float16'"
            )
        if self.dtype is torch.float16:
            self.scaler = torch.amp.GradScaler(
                self.device_type,
                init_scale=self.config.init_scale,
                growth_interval=self.config.growth_interval,
            )
            self._skipped = torch.zeros((), device=run.device)

    @hookimpl(wrapper=True)
    def denoisekit_train_forward(self) -> Generator[None, Any, Any]:
        if self.dtype is None:
            return (yield)
        with torch.autocast(self.device_type, dtype=self.dtype):
            return (yield)

    @hookimpl(tryfirst=True)
    def denoisekit_backward(self, loss: torch.Tensor) -> bool | None:
        if self.scaler is None:
            return None  # bfloat16: the core's plain backward
        self.scaler.scale(loss).backward()
        return True

    @hookimpl(tryfirst=True)
    def denoisekit_optimizer_step(self, run: Run) -> bool | None:
        scaler = self.scaler
        if scaler is None:
            return None  # bfloat16: the core's step
        optimizer = run.optimizer
        scaler.unscale_(optimizer)  # gradients in true units, for clipping and logging
        self._record_found_inf(optimizer)
        run.clip_gradients()
        scaler.step(optimizer)  # skipped when the gradients hold inf/NaN
        scaler.update()
        # True: handled (the step may have been skipped; see step_skipped()).
        return True

    @hookimpl(tryfirst=True)
    def denoisekit_log_scalars(self, scalars: dict[str, float]) -> None:
        if self.scaler is None:
            return
        scalars["amp_scale"] = float(self.scaler.get_scale())
        if self._skipped is not None:
            scalars["amp_skipped_steps"] = int(self._skipped.item())

    @hookimpl
    def denoisekit_state_dict(self) -> dict[str, Any] | None:
        if self.scaler is None:
            return None
        skipped = int(self._skipped.item()) if self._skipped is not None else 0
        return {"amp": {"scaler": self.scaler.state_dict(), "skipped_steps": skipped}}

    @hookimpl
    def denoisekit_load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("amp")
        if self.scaler is None or saved is None:
            return
        self.scaler.load_state_dict(saved["scaler"])
        if self._skipped is not None:
            self._skipped.fill_(float(saved.get("skipped_steps", 0)))

    # ------------------------------------------------------------------ helpers

    def _record_found_inf(self, optimizer: torch.optim.Optimizer) -> None:
        # GradScaler keeps unscale_'s inf checks per device (private API, stable since
        # torch 1.6); summing them stays on the device. Without it, nothing is counted.
        found_per_device = getattr(self.scaler, "_found_inf_per_device", None)
        if found_per_device is None or self._skipped is None:
            return
        found = list(found_per_device(optimizer).values())
        if not found:
            return
        total = found[0].to(self._skipped.device)
        for extra in found[1:]:
            total = total + extra.to(self._skipped.device)
        self._last_found_inf = total
        self._skipped += total.clamp(max=1.0)


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    """Register ``amp``."""
    return [
        ComponentSpec(
            kind="hook",
            name="amp",
            config=AMPConfig,
            build=AMPHook,
            summary="mixed precision: autocast (bfloat16/float16) and a GradScaler for float16.",
        )
    ]
