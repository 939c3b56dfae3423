"""The denoiser a sampler sees: a backbone, its schedule and its prediction type.

Samplers never look at what the backbone predicts: they call :meth:`Denoiser.predict`
and get both the noise estimate ``eps`` and the clean-data estimate ``x0``, whatever the
parameterization (k-diffusion's adapter idea, for the discrete DDPM family).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from denoisekit import diffusion
from denoisekit.contracts import Backbone, optional
from denoisekit.deprecation import renamed_attributes
from denoisekit.diffusion import DiscreteSchedule
from denoisekit.errors import ComponentError

__all__ = [
    "PIXEL_RANGE", "PREDICTION_TYPES", "Denoiser", "check_output_shape", "clip_to_range",
    "eval_mode",
]  # fmt: skip

#: What a backbone may be trained to predict.
PREDICTION_TYPES: tuple[str, ...] = ("eps", "x0", "v")
#: The data range of pixel space (images in [-1, 1]); latent space has none.
PIXEL_RANGE: tuple[float, float] = (-1.0, 1.0)


def clip_to_range(x: torch.Tensor, denoiser: Any) -> torch.Tensor:
    """``x`` clamped to ``denoiser.data_range`` (pixel space: [-1, 1], also for a denoiser
    without the attribute); unchanged where it is None (latent space)."""
    bounds = getattr(denoiser, "data_range", PIXEL_RANGE)
    return x if bounds is None else x.clamp(*bounds)


def check_output_shape(output: Any, x_t: torch.Tensor, backbone: str) -> None:
    """Raise :class:`ComponentError`, naming ``backbone``, unless ``output`` is a tensor of
    ``x_t``'s shape (one prediction per input value). Compares sizes: never waits for the device."""
    if isinstance(output, torch.Tensor) and output.shape == x_t.shape:
        return
    got = (
        f"shape {tuple(output.shape)}"
        if isinstance(output, torch.Tensor)
        else f"a {type(output).__name__}"
    )
    raise ComponentError(
        f"{backbone} returned {got} for an input of shape {tuple(x_t.shape)}; a backbone "
        "must return a tensor of its input's shape (one prediction per input value)"
    )


class Denoiser:
    """Wrap ``model(x_t, time, cond=None)`` into ``(eps, x0)`` estimates.

    Args:
        model: the backbone; its optional ``time_input`` is ``"timestep"`` (the integer index
            as a float) or ``"log_snr"`` (the schedule's log-SNR at that index).
        schedule: its training schedule (any ``NoiseSchedule``, made a :class:`DiscreteSchedule`).
        prediction_type: ``"eps"``, ``"x0"`` or ``"v"``.
        name: how errors name the backbone (default: ``the backbone <its class>``); a
            backbone output not of its input's shape is a :class:`ComponentError`.
        data_range: the range of the data it denoises, which samplers clamp to
            (:func:`clip_to_range`): :data:`PIXEL_RANGE`, or None in latent space.

    Attributes:
        num_evaluations: network evaluations made through :meth:`predict` (a plain int;
            set it to 0 to restart).
    """

    def __init__(
        self,
        model: Any,
        schedule: DiscreteSchedule,
        prediction_type: str = "eps",
        *,
        name: str | None = None,
        data_range: tuple[float, float] | None = PIXEL_RANGE,
    ) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}: {prediction_type!r}"
            )
        time_input = optional(model, Backbone, "time_input")
        if time_input not in ("timestep", "log_snr"):
            raise ValueError(f"model.time_input must be 'timestep' or 'log_snr': {time_input!r}")
        self.model = model
        self.time_input = time_input
        self.schedule = DiscreteSchedule.of(schedule)
        self.prediction_type = prediction_type
        self.name = name if name is not None else f"the backbone {type(model).__name__}"
        self.num_evaluations = 0
        self.data_range = data_range

    def model_time(self, t: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """What the backbone receives as time for timesteps ``t`` ``(B,)`` (integer or
        fractional), in ``dtype`` on ``t``'s device: the log-SNR at ``t`` for
        ``time_input == "log_snr"`` (interpolated between steps), else ``t`` as a float."""
        if self.time_input == "log_snr":
            tables = self.schedule.tables(t.device, dtype)
            if not t.dtype.is_floating_point:
                return tables.log_snr[t]
            return diffusion.coefficient_at(tables, "log_snr", t, 1)
        return t.to(dtype)

    def predict(
        self, x_t: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluate the backbone once on noisy images ``x_t`` ``(B, ...)``: ``(eps, x0)`` at
        timesteps ``t`` of the original schedule, ``(B,)`` (a number or a 0-dim tensor is
        broadcast); ``cond`` is passed to the backbone (omitted when ``None``).

        ``t`` is integer (``torch.long``: the schedule's steps) or floating (fractional
        timesteps in ``[0, T - 1]``, float64 or float32): there the schedule is interpolated
        linearly in log-SNR between the neighbouring steps (k-diffusion's discrete-schedule
        wrappers) and the backbone gets the fractional ``t`` (or its log-SNR). At integral
        values a floating ``t`` gives exactly what the integer one gives."""
        t = torch.as_tensor(t, device=x_t.device)
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"timesteps must be an integer or floating tensor, got {t.dtype}")
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        # Timestep embeddings lose precision below float32; float64 stays float64.
        time = self.model_time(t, torch.promote_types(x_t.dtype, torch.float32))
        out = self.network(x_t, t, time, cond)
        self.num_evaluations += 1
        check_output_shape(out, x_t, self.name)
        # Under autocast the output may be half precision: convert in the sampler state's dtype.
        out = out.to(x_t.dtype)
        if self.prediction_type == "eps":
            eps = out
            x0 = diffusion.predict_x0_from_eps(self.schedule, x_t, t, eps)
        elif self.prediction_type == "x0":
            x0 = out
            eps = diffusion.predict_eps_from_x0(self.schedule, x_t, t, x0)
        else:  # "v" (Salimans & Ho 2022, appendix D)
            x0 = diffusion.x0_from_v(self.schedule, x_t, t, out)
            eps = diffusion.eps_from_v(self.schedule, x_t, t, out)
        return eps, x0

    def network(
        self, x_t: torch.Tensor, t: torch.Tensor, time: torch.Tensor, cond: Any
    ) -> torch.Tensor:
        """One evaluation of the backbone at timesteps ``t`` (``time`` is what the backbone
        reads); classifier-free guidance overrides it."""
        return self.model(x_t, time) if cond is None else self.model(x_t, time, cond)

    __getattr__ = renamed_attributes("Denoiser", {"nfe": "num_evaluations"})  # until 0.3.0

    def __repr__(self) -> str:
        return (
            f"Denoiser(model={type(self.model).__name__}, schedule={self.schedule!r}, "
            f"prediction_type={self.prediction_type!r})"
        )


@contextmanager
def eval_mode(module: Any) -> Iterator[None]:
    """Put a module in eval mode for the block, then restore its mode."""
    was_training = getattr(module, "training", False)
    if hasattr(module, "eval"):
        module.eval()
    try:
        yield
    finally:
        if hasattr(module, "train"):
            module.train(was_training)
