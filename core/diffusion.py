"""Diffusion math on a discrete variance-preserving schedule, shared by losses and samplers.

Conversions between the eps / x0 / v parameterizations, timestep spacings for shortened sampling
chains, the steps a sampler visits and a batch-size-independent noise source; the schedule
(:class:`DiscreteSchedule`, re-exported) and the notation are in :mod:`denoisekit.schedule`.

Every function accepts any floating dtype and device, takes timesteps as an integer tensor of
shape ``(B,)`` and broadcasts per-timestep coefficients (from :meth:`DiscreteSchedule.tables`)
over the remaining (image) dimensions.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from denoisekit.deprecation import module_getattr
from denoisekit.schedule import DiscreteSchedule
from denoisekit.schedule import ScheduleTables as ScheduleTables  # re-exported

#: Timestep spacings for shortened chains, named as diffusers names them.
SPACINGS: tuple[str, ...] = ("leading", "trailing", "linspace")
#: The reverse process's fixed variances (Ho et al. 2020, section 3.2): ``fixed_small`` is
#: the posterior variance beta~_t, ``fixed_large`` is beta_t.
VARIANCES: tuple[str, ...] = ("fixed_small", "fixed_large")

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None


def spaced_timesteps(num_timesteps: int, steps: int, spacing: str = "linspace") -> list[int]:
    """Timesteps of a shortened sampling chain, noisiest first; ``steps == num_timesteps``
    gives the full chain. ``ValueError`` for ``steps`` outside ``[1, T]`` or an unknown spacing.

    The spacings are diffusers' (``DDIMScheduler.set_timesteps``, ``steps_offset = 0``; Lin
    et al. 2023, table 2):

    * ``"linspace"``: ``round(linspace(0, T - 1, steps))``, Improved DDPM's section 4 rule;
      includes ``T - 1`` and ``0`` when ``steps > 1``.
    * ``"leading"``: ``arange(steps) * (T // steps)``; may stay well below ``T - 1``.
    * ``"trailing"``: ``round(T - arange(steps) * T / steps) - 1``; starts at ``T - 1`` (the
      best choice for few steps).
    """
    T, n = int(num_timesteps), int(steps)
    if n < 1:
        raise ValueError(f"'steps' must be > 0: {n}")
    if n > T:
        raise ValueError(
            f"'steps' ({n}) exceeds the schedule's number of timesteps ({T}); use steps <= {T}"
        )
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, n).round()
    elif spacing == "leading":
        ts = np.arange(0, n) * (T // n)
    elif spacing == "trailing":
        # diffusers: np.round(np.arange(T, 0, -T / n)) - 1, written to yield exactly n values.
        ts = np.round(T - np.arange(n) * (T / n)) - 1
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    out = sorted({int(t) for t in ts}, reverse=True)
    if len(out) != n:  # cannot happen for n <= T; kept as a guard against silent duplicates
        raise ValueError(f"spacing {spacing!r} gave duplicate timesteps for T={T}, steps={n}")
    return out


@dataclasses.dataclass(frozen=True)
class SamplingSteps:
    """The steps a sampler visits, noisiest first, built once (no host sync per step):
    ``timesteps`` ``t_0 > ... > t_{K-1}`` (original-schedule indices), ``alpha_bar`` at each
    and ``alpha_bar_next`` at the next one (Python floats; ``1.0`` after the last: sampling
    ends at the clean data, where ``x`` is the final x0 estimate), and ``t``, a ``(K, B)``
    long tensor on ``x_T``'s device whose row ``n`` is ``timesteps[n]``."""

    timesteps: list[int]
    alpha_bar: list[float]
    alpha_bar_next: list[float]
    t: torch.Tensor


def sampling_steps(schedule: Any, timesteps: Sequence[int], x_T: torch.Tensor) -> SamplingSteps:
    """The :class:`SamplingSteps` over ``timesteps`` (decreasing, e.g. from
    :func:`spaced_timesteps`) of any ``NoiseSchedule``, for the batch ``x_T``."""
    ts = [int(t) for t in timesteps]
    alpha_bar = schedule.alphas_cumprod.tolist()  # float64 values, host side
    T = len(alpha_bar)
    if not ts or ts[0] >= T or ts[-1] < 0 or any(a <= b for a, b in itertools.pairwise(ts)):
        raise ValueError(f"timesteps must be decreasing, in [0, {T}) and not empty: {ts}")
    ab = [alpha_bar[t] for t in ts]
    t = torch.as_tensor(ts, dtype=torch.long).to(x_T.device).view(-1, 1)
    return SamplingSteps(ts, ab, [*ab[1:], 1.0], t.expand(len(ts), x_T.shape[0]))


# --------------------------------------------------------------------------- parameterizations


def coefficient(table: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """``table[t]`` shaped ``(B, 1, ..., 1)`` to broadcast over a tensor of ``ndim`` dims."""
    return table[t.to(table.device)].reshape(-1, *([1] * (ndim - 1)))


def predict_x0_from_eps(
    schedule: DiscreteSchedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """``x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)`` (DDPM eq. 15)."""
    tab = schedule.tables(x_t.device, x_t.dtype)
    return (
        coefficient(tab.sqrt_recip_alpha_bar, t, x_t.ndim) * x_t
        - coefficient(tab.sqrt_recipm1_alpha_bar, t, x_t.ndim) * eps
    )


def predict_eps_from_x0(
    schedule: DiscreteSchedule, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor
) -> torch.Tensor:
    """``eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t)``."""
    tab = schedule.tables(x_t.device, x_t.dtype)
    return (x_t - coefficient(tab.sqrt_alpha_bar, t, x_t.ndim) * x0) / coefficient(
        tab.sqrt_one_minus_alpha_bar, t, x_t.ndim
    )


def v_from_eps_x0(
    schedule: DiscreteSchedule, t: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor
) -> torch.Tensor:
    """The v target ``sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0`` (Salimans & Ho 2022);
    needs no ``x_t``: it is what a v-prediction loss regresses onto."""
    tab = schedule.tables(x0.device, x0.dtype)
    return (
        coefficient(tab.sqrt_alpha_bar, t, x0.ndim) * eps
        - coefficient(tab.sqrt_one_minus_alpha_bar, t, x0.ndim) * x0
    )


def x0_from_v(
    schedule: DiscreteSchedule, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """``x0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v``."""
    tab = schedule.tables(x_t.device, x_t.dtype)
    return (
        coefficient(tab.sqrt_alpha_bar, t, x_t.ndim) * x_t
        - coefficient(tab.sqrt_one_minus_alpha_bar, t, x_t.ndim) * v
    )


def eps_from_v(
    schedule: DiscreteSchedule, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """``eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v``."""
    tab = schedule.tables(x_t.device, x_t.dtype)
    return (
        coefficient(tab.sqrt_one_minus_alpha_bar, t, x_t.ndim) * x_t
        + coefficient(tab.sqrt_alpha_bar, t, x_t.ndim) * v
    )


# --------------------------------------------------------------------------- noise


def randn(
    shape: Sequence[int],
    generator: GeneratorArg,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise of ``shape`` ``(B, ...)``, reproducible per image.

    ``generator``: one for the batch, a list of ``B`` (image ``i`` from ``generator[i]``,
    independent of the batch size and of its position), or ``None`` (the global RNG). Noise
    is drawn on each generator's own device and moved to ``device``: a CPU generator gives
    the same images on any device (at a host-to-device copy per draw; CUDA generators avoid
    it). Half precision is drawn in float32 and cast (it matches the float32 stream).
    """
    shape = tuple(int(s) for s in shape)
    draw_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    device = torch.device(device)
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = device if generator is None else generator.device
        x = torch.randn(shape, generator=generator, device=gen_device, dtype=draw_dtype)
        return _to_device(x, device).to(dtype=dtype)
    generators = list(generator)
    if not shape or len(generators) != shape[0]:
        raise ValueError(
            f"got {len(generators)} generators for a batch of shape {shape}: pass one per image"
        )
    per_image = (1, *shape[1:])
    parts = [
        torch.randn(per_image, generator=g, device=g.device, dtype=draw_dtype) for g in generators
    ]
    if len({p.device for p in parts}) == 1:  # one concatenation, one copy to `device`
        return _to_device(torch.cat(parts, dim=0), device).to(dtype=dtype)
    return torch.cat([_to_device(p, device) for p in parts], dim=0).to(dtype=dtype)


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``; a host tensor goes to CUDA through pinned memory, asynchronously
    (a copy from pageable memory would make the host wait for the queued kernels)."""
    if x.device.type == "cpu" and device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


# --------------------------------------------------------------------------- removed in 0.2.0


def _start_noise(
    shape: Sequence[int],
    generator: GeneratorArg,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    x_T: torch.Tensor | None = None,
) -> torch.Tensor:
    """0.1's ``start_noise``: a copy of ``x_T``, or a per-image draw of ``shape``."""
    if x_T is None:
        return randn(shape, generator, device=device, dtype=dtype or torch.float32)
    if tuple(x_T.shape) != tuple(int(s) for s in shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
    return x_T.to(device=device, dtype=dtype or x_T.dtype, copy=True)


def _batch_timesteps(timesteps: Sequence[int], batch: int, device: Any) -> torch.Tensor:
    """0.1's ``batch_timesteps``: row ``i`` is ``timesteps[i]``, ``batch`` times."""
    t = torch.as_tensor(timesteps, dtype=torch.long).to(device)
    return t.view(-1, 1).expand(t.numel(), batch)


__getattr__ = module_getattr(__name__, {
    "start_noise": (_start_noise, "the host draws x_T and passes it to sample(denoiser, x_T, "
                    "...); draw one with denoisekit.diffusion.randn(shape, generator)"),
    "batch_timesteps": (_batch_timesteps, "use sampling_steps(schedule, timesteps, x_T).t"),
})  # fmt: skip
