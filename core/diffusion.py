"""Diffusion math on a discrete variance-preserving schedule, shared by the engine and plugins.

The forward process (``q_sample``, ``q_posterior``), conversions between the eps / x0 / v
parameterizations, the steps a sampler visits and a batch-size-independent noise source; the
schedule (:class:`DiscreteSchedule`, re-exported) and the notation are in
:mod:`denoisekit.schedule`, the timestep spacings (re-exported) in :mod:`denoisekit.timesteps`.

Every function accepts any floating dtype and device, takes timesteps as a ``(B,)`` tensor and
broadcasts per-timestep coefficients (from :meth:`DiscreteSchedule.tables`) over the remaining
(image) dimensions. Timesteps are integer (``torch.long``: table lookups) or floating
(fractional timesteps: the schedule interpolated in log-SNR, see :func:`coefficient_at`;
``q_posterior`` takes integers only).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch

from denoisekit.deprecation import module_getattr
from denoisekit.schedule import DiscreteSchedule
from denoisekit.schedule import ScheduleTables as ScheduleTables  # re-exported
from denoisekit.timesteps import SPACINGS as SPACINGS  # re-exported
from denoisekit.timesteps import spaced_timesteps as spaced_timesteps  # re-exported

#: The reverse process's fixed variances (Ho et al. 2020, section 3.2): ``fixed_small`` is
#: the posterior variance beta~_t, ``fixed_large`` is beta_t.
VARIANCES: tuple[str, ...] = ("fixed_small", "fixed_large")

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None


@dataclasses.dataclass(frozen=True)
class SamplingSteps:
    """The steps a sampler visits, noisiest first, built once (no host sync per step):
    ``timesteps`` ``t_0 > ... > t_{K-1}`` (original-schedule indices: ints, or floats where
    fractional), ``alpha_bar`` at each and ``alpha_bar_next`` at the next one (Python floats;
    ``1.0`` after the last: sampling ends at the clean data, where ``x`` is the final x0
    estimate), and ``t``, a ``(K, B)`` tensor on ``x_T``'s device whose row ``n`` is
    ``timesteps[n]``: what the sampler passes to ``predict``. Its dtype is ``torch.long``
    when every timestep is an integer, else :func:`timestep_dtype` (float64)."""

    timesteps: list[int] | list[float]
    alpha_bar: list[float]
    alpha_bar_next: list[float]
    t: torch.Tensor


def sampling_steps(schedule: Any, timesteps: Sequence[float], x_T: torch.Tensor) -> SamplingSteps:
    """The :class:`SamplingSteps` over ``timesteps`` (decreasing, in ``[0, T - 1]``, e.g. from
    :func:`spaced_timesteps`; fractional ones allowed) of any ``NoiseSchedule``, for the batch
    ``x_T``. ``alpha_bar`` at a fractional timestep is interpolated in log-SNR, as
    :meth:`Denoiser.predict <denoisekit.denoiser.Denoiser.predict>` does."""
    ts = [int(t) if float(t).is_integer() else float(t) for t in timesteps]
    integral = all(isinstance(t, int) for t in ts)
    discrete = DiscreteSchedule.of(schedule)
    T = discrete.num_timesteps
    if not ts or ts[0] > T - 1 or ts[-1] < 0 or any(a <= b for a, b in itertools.pairwise(ts)):
        raise ValueError(f"timesteps must be decreasing, in [0, {T - 1}] and not empty: {ts}")
    host = torch.tensor(ts, dtype=torch.long if integral else torch.float64)
    ab = coefficient_at(discrete.tables("cpu", torch.float64), "alpha_bar", host, 1).tolist()
    dtype = torch.long if integral else timestep_dtype(x_T.device)
    t = host.to(device=x_T.device, dtype=dtype).view(-1, 1)
    return SamplingSteps(ts, ab, [*ab[1:], 1.0], t.expand(len(ts), x_T.shape[0]))


def timestep_dtype(device: torch.device) -> torch.dtype:
    """The dtype of fractional timesteps a sampler passes on ``device``: float64 (float32
    where the device has no float64, as Apple's MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


# --------------------------------------------------------------------------- coefficients

#: A coefficient table as a function of the log-SNR ``lam`` (for fractional timesteps).
_FROM_LOG_SNR: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "alpha_bar": torch.sigmoid,
    "log_snr": lambda lam: lam,
    "sqrt_alpha_bar": lambda lam: torch.sigmoid(lam).sqrt(),
    "sqrt_one_minus_alpha_bar": lambda lam: torch.sigmoid(-lam).sqrt(),
    "sqrt_recip_alpha_bar": lambda lam: torch.exp(-lam).log1p().mul(0.5).exp(),
    "sqrt_recipm1_alpha_bar": lambda lam: torch.exp(-0.5 * lam),
}


def coefficient(table: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """``table[t]`` shaped ``(B, 1, ..., 1)`` to broadcast over a tensor of ``ndim`` dims
    (integer timesteps ``t``; :func:`coefficient_at` also takes fractional ones)."""
    return table[t.to(table.device)].reshape(-1, *([1] * (ndim - 1)))


def coefficient_at(tables: ScheduleTables, name: str, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """The table ``name`` of ``tables`` at timesteps ``t`` ``(B,)``, shaped to broadcast over
    ``ndim`` dims. Integer ``t``: :func:`coefficient`. Floating ``t`` (fractional timesteps,
    clamped to ``[0, T - 1]``): the log-SNR interpolated linearly between the neighbouring
    steps (k-diffusion's ``DiscreteSchedule.t_to_sigma``: linear in log-sigma) and the
    coefficient computed from it; at integral values, exactly ``table[t]`` (bit-equal).
    Everything stays on the device: no host sync. ``name``: a key of ``_FROM_LOG_SNR``."""
    table = getattr(tables, name)
    if not t.dtype.is_floating_point:
        return coefficient(table, t, ndim)
    last = table.shape[0] - 1
    t = t.to(table.device).clamp(0, last)
    lo = t.floor()
    w = t - lo
    lo = lo.long()
    hi = (lo + 1).clamp(max=last)
    lam = torch.lerp(tables.log_snr[lo], tables.log_snr[hi], w.to(table.dtype))
    value = torch.where(w == 0, table[lo], _FROM_LOG_SNR[name](lam))
    return value.reshape(-1, *([1] * (ndim - 1)))


# --------------------------------------------------------------------------- forward process


def q_sample(
    schedule: DiscreteSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x0): ``sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps`` (DDPM eq. 4),
    for clean data ``x0`` ``(B, ...)``, timesteps ``t`` ``(B,)`` and ``noise`` (eps)."""
    tab = schedule.tables(x0.device, x0.dtype)
    return (
        coefficient_at(tab, "sqrt_alpha_bar", t, x0.ndim) * x0
        + coefficient_at(tab, "sqrt_one_minus_alpha_bar", t, x0.ndim) * noise
    )


def q_posterior(
    schedule: DiscreteSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_{t-1} | x_t, x0) (DDPM eq. 6-7), integer timesteps ``t``.

    Returns:
        ``(mean, variance, log_variance_clipped)``: ``mean`` has ``x_t``'s shape; the
        variances have shape ``(B, 1, ..., 1)`` (broadcastable). At ``t = 0`` the variance
        is 0 and the log-variance is clipped to its value at ``t = 1``.
    """
    if t.dtype.is_floating_point:
        raise TypeError(f"q_posterior needs integer timesteps, got {t.dtype}")
    tab = schedule.tables(x_t.device, x_t.dtype)
    n = x_t.ndim
    mean = (
        coefficient(tab.posterior_mean_coef1, t, n) * x0
        + coefficient(tab.posterior_mean_coef2, t, n) * x_t
    )
    return (
        mean,
        coefficient(tab.posterior_variance, t, n),
        coefficient(tab.posterior_log_variance_clipped, t, n),
    )


# --------------------------------------------------------------------------- parameterizations


def predict_x0_from_eps(
    schedule: DiscreteSchedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """``x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)`` (DDPM eq. 15)."""
    tab = schedule.tables(x_t.device, x_t.dtype)
    return (
        coefficient_at(tab, "sqrt_recip_alpha_bar", t, x_t.ndim) * x_t
        - coefficient_at(tab, "sqrt_recipm1_alpha_bar", t, x_t.ndim) * eps
    )


def predict_eps_from_x0(
    schedule: DiscreteSchedule, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor
) -> torch.Tensor:
    """``eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t)``."""
    tab = schedule.tables(x_t.device, x_t.dtype)
    return (x_t - coefficient_at(tab, "sqrt_alpha_bar", t, x_t.ndim) * x0) / coefficient_at(
        tab, "sqrt_one_minus_alpha_bar", t, x_t.ndim
    )


def v_from_eps_x0(
    schedule: DiscreteSchedule, t: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor
) -> torch.Tensor:
    """The v target ``sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0`` (Salimans & Ho 2022);
    needs no ``x_t``: it is what a v-prediction loss regresses onto."""
    tab = schedule.tables(x0.device, x0.dtype)
    return (
        coefficient_at(tab, "sqrt_alpha_bar", t, x0.ndim) * eps
        - coefficient_at(tab, "sqrt_one_minus_alpha_bar", t, x0.ndim) * x0
    )


def x0_from_v(
    schedule: DiscreteSchedule, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """``x0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v``."""
    tab = schedule.tables(x_t.device, x_t.dtype)
    return (
        coefficient_at(tab, "sqrt_alpha_bar", t, x_t.ndim) * x_t
        - coefficient_at(tab, "sqrt_one_minus_alpha_bar", t, x_t.ndim) * v
    )


def eps_from_v(
    schedule: DiscreteSchedule, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """``eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v``."""
    tab = schedule.tables(x_t.device, x_t.dtype)
    return (
        coefficient_at(tab, "sqrt_one_minus_alpha_bar", t, x_t.ndim) * x_t
        + coefficient_at(tab, "sqrt_alpha_bar", t, x_t.ndim) * v
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
