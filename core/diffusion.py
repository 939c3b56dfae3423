"""The Gaussian forward process on a discrete variance-preserving schedule.

Pure tensor math shared by losses, samplers and the training loop: the schedule object
with its derived quantities, ``q_sample``, conversions between the eps / x0 / v
parameterizations, the posterior q(x_{t-1} | x_t, x0), timestep spacings for shortened
sampling chains, the steps a sampler visits and a batch-size-independent noise source.

*Notation* (Ho et al. 2020, "DDPM"; Nichol & Dhariwal 2021, "Improved DDPM"):
``alpha_bar`` is the cumulative product of ``alpha = 1 - beta``; the forward process is
``x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps`` with ``eps ~ N(0, I)``;
``v = sqrt(alpha_bar_t) * eps - sqrt(1 - alpha_bar_t) * x0`` (Salimans & Ho 2022);
``snr = alpha_bar / (1 - alpha_bar)``.

Indexing follows diffusers: table index ``t = 0 .. T-1`` holds the paper's step ``t + 1``,
so ``alpha_bar_prev[0] = 1`` (the clean data) and the last index is the noisiest.

Every function accepts any floating dtype and device, takes timesteps as an integer
tensor of shape ``(B,)`` and broadcasts per-timestep coefficients over the remaining
(image) dimensions. Coefficients come from :meth:`DiscreteSchedule.tables`, computed in
float64 and cast once per (device, dtype).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "SPACINGS",
    "VARIANCES",
    "DiscreteSchedule",
    "SamplingSteps",
    "ScheduleTables",
    "eps_from_v",
    "predict_eps_from_x0",
    "predict_x0_from_eps",
    "q_posterior",
    "q_sample",
    "randn",
    "sampling_steps",
    "spaced_timesteps",
    "v_from_eps_x0",
    "x0_from_v",
]

#: Timestep spacings for shortened chains, named as diffusers names them.
SPACINGS: tuple[str, ...] = ("leading", "trailing", "linspace")
#: The reverse process's fixed variances (Ho et al. 2020, section 3.2): ``fixed_small`` is
#: the posterior variance beta~_t, ``fixed_large`` is beta_t.
VARIANCES: tuple[str, ...] = ("fixed_small", "fixed_large")

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None


# --------------------------------------------------------------------------- schedule


@dataclasses.dataclass(frozen=True)
class ScheduleTables:
    """Per-timestep coefficient tables, each of shape ``(T,)`` on one device and dtype.

    Built by :meth:`DiscreteSchedule.tables` (computed in float64, then cast once).
    ``posterior_*`` describe q(x_{t-1} | x_t, x0) (DDPM eq. 6-7); at ``t = 0`` the
    posterior variance is 0 and its log is clipped to the value at ``t = 1``, as in
    improved-diffusion.
    """

    alpha_bar: torch.Tensor
    alpha_bar_prev: torch.Tensor
    betas: torch.Tensor
    sqrt_alpha_bar: torch.Tensor
    sqrt_one_minus_alpha_bar: torch.Tensor
    sqrt_recip_alpha_bar: torch.Tensor  # 1 / sqrt(alpha_bar)
    sqrt_recipm1_alpha_bar: torch.Tensor  # sqrt(1 / alpha_bar - 1)
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor  # multiplies x0
    posterior_mean_coef2: torch.Tensor  # multiplies x_t
    snr: torch.Tensor
    log_snr: torch.Tensor


def _as_float64(values: torch.Tensor | Sequence[float] | np.ndarray) -> torch.Tensor:
    # Python floats and numpy arrays go straight to float64 (torch.as_tensor of a list of
    # floats would round through float32 first).
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", torch.float64)
    return torch.as_tensor(np.asarray(values, dtype=np.float64))


def _cache_key(device: torch.device | str | None, dtype: torch.dtype) -> tuple[str, torch.dtype]:
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device), dtype


class DiscreteSchedule:
    """A discrete-time variance-preserving noise schedule, defined by its ``alpha_bar``.

    Args:
        alphas_cumprod: ``alpha_bar`` at indices ``0 .. T-1`` (diffusers' indexing: index
            ``t`` is the paper's ``t + 1``); strictly decreasing, in the open interval
            (0, 1). Stored as a float64 CPU tensor.

    Raises:
        ValueError: when ``alphas_cumprod`` is empty, not 1-D, not finite, outside (0, 1)
            or not strictly decreasing.
    """

    def __init__(self, alphas_cumprod: torch.Tensor | Sequence[float] | np.ndarray) -> None:
        alpha_bar = _as_float64(alphas_cumprod).clone()
        if alpha_bar.ndim != 1 or alpha_bar.numel() == 0:
            raise ValueError(
                f"alphas_cumprod must be a non-empty 1-D tensor, got shape {tuple(alpha_bar.shape)}"
            )
        if not bool(torch.isfinite(alpha_bar).all()):
            raise ValueError("alphas_cumprod must be finite")
        if not bool(((alpha_bar > 0) & (alpha_bar < 1)).all()):
            bad = int(torch.nonzero((alpha_bar <= 0) | (alpha_bar >= 1))[0])
            raise ValueError(
                f"alphas_cumprod must lie in (0, 1): index {bad} is {alpha_bar[bad].item()!r}"
            )
        if alpha_bar.numel() > 1 and not bool((alpha_bar[1:] < alpha_bar[:-1]).all()):
            bad = int(torch.nonzero(alpha_bar[1:] >= alpha_bar[:-1])[0]) + 1
            raise ValueError(
                f"alphas_cumprod must be strictly decreasing: index {bad} "
                f"({alpha_bar[bad].item()!r}) >= index {bad - 1} ({alpha_bar[bad - 1].item()!r})"
            )
        self._alpha_bar = alpha_bar
        self._tables: dict[tuple[str, torch.dtype], ScheduleTables] = {}

    @classmethod
    def of(cls, schedule: Any) -> DiscreteSchedule:
        """``schedule`` itself when it is a ``DiscreteSchedule``, else one over its
        ``alphas_cumprod`` (any object meeting the ``NoiseSchedule`` contract)."""
        return schedule if isinstance(schedule, cls) else cls(schedule.alphas_cumprod)

    @classmethod
    def from_betas(cls, betas: torch.Tensor | Sequence[float] | np.ndarray) -> DiscreteSchedule:
        """Build a schedule from ``beta_1 .. beta_T`` (each in (0, 1)).

        ``alpha_bar_t = prod_{s <= t} (1 - beta_s)`` (DDPM section 2), in float64.
        """
        b = _as_float64(betas)
        if b.ndim != 1 or b.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(b.shape)}")
        if not bool(((b > 0) & (b < 1)).all()):
            raise ValueError("betas must lie in (0, 1)")
        return cls(torch.cumprod(1.0 - b, dim=0))

    # -- derived quantities (float64, CPU, fresh tensors) --------------------------------

    @property
    def num_timesteps(self) -> int:
        """T, the number of diffusion steps."""
        return self._alpha_bar.numel()

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """``alpha_bar[t]``, shape ``(T,)``."""
        return self._alpha_bar.clone()

    @property
    def alphas_cumprod_prev(self) -> torch.Tensor:
        """``alpha_bar[t - 1]`` with ``1.0`` at ``t = 0``."""
        return torch.cat([self._alpha_bar.new_ones(1), self._alpha_bar[:-1]])

    @property
    def alphas(self) -> torch.Tensor:
        """``alpha_t = alpha_bar_t / alpha_bar_{t-1}``."""
        return self._alpha_bar / self.alphas_cumprod_prev

    @property
    def betas(self) -> torch.Tensor:
        """``beta_t = 1 - alpha_t``."""
        return 1.0 - self.alphas

    @property
    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio ``alpha_bar / (1 - alpha_bar)``."""
        return self._alpha_bar / (1.0 - self._alpha_bar)

    @property
    def log_snr(self) -> torch.Tensor:
        """``log(alpha_bar) - log(1 - alpha_bar)`` (accurate near both ends)."""
        return torch.log(self._alpha_bar) - torch.log1p(-self._alpha_bar)

    # -- tables ---------------------------------------------------------------------------

    def tables(
        self, device: torch.device | str | None = "cpu", dtype: torch.dtype = torch.float32
    ) -> ScheduleTables:
        """The coefficient tables on ``device`` in ``dtype``, cast once and cached.

        Computed in float64 on the CPU, then moved; later calls with the same device and
        dtype return the same object (no per-step casting or allocation).
        """
        key = _cache_key(device, dtype)
        cached = self._tables.get(key)
        if cached is not None:
            return cached
        if not dtype.is_floating_point:
            raise TypeError(f"schedule tables need a floating dtype, got {dtype}")
        # Notation: ab = alpha_bar_t, ab_prev = alpha_bar_{t-1}; DDPM eq. (4), (6), (7).
        ab = self._alpha_bar
        ab_prev = self.alphas_cumprod_prev
        alpha = ab / ab_prev
        beta = 1.0 - alpha
        post_var = beta * (1.0 - ab_prev) / (1.0 - ab)
        # posterior_variance[0] is 0: clip its log to the value at t = 1 (improved-diffusion).
        first = post_var[1:2] if ab.numel() > 1 else beta[:1]
        post_log_var = torch.log(torch.cat([first, post_var[1:]]))
        host = {
            "alpha_bar": ab,
            "alpha_bar_prev": ab_prev,
            "betas": beta,
            "sqrt_alpha_bar": ab.sqrt(),
            "sqrt_one_minus_alpha_bar": (1.0 - ab).sqrt(),
            "sqrt_recip_alpha_bar": ab.rsqrt(),
            "sqrt_recipm1_alpha_bar": (1.0 / ab - 1.0).sqrt(),
            "posterior_variance": post_var,
            "posterior_log_variance_clipped": post_log_var,
            "posterior_mean_coef1": beta * ab_prev.sqrt() / (1.0 - ab),
            "posterior_mean_coef2": (1.0 - ab_prev) * alpha.sqrt() / (1.0 - ab),
            "snr": ab / (1.0 - ab),
            "log_snr": torch.log(ab) - torch.log1p(-ab),
        }
        dev = torch.device(key[0])
        tables = ScheduleTables(**{k: v.to(device=dev, dtype=dtype) for k, v in host.items()})
        self._tables[key] = tables
        return tables

    # -- respacing ------------------------------------------------------------------------

    def respace(self, use_timesteps: Iterable[int]) -> tuple[DiscreteSchedule, torch.Tensor]:
        """Keep a subset of timesteps (Improved DDPM, section 4).

        The new schedule keeps ``alpha_bar`` at the kept timesteps ``t_1 < ... < t_K``, so its
        betas are ``1 - alpha_bar_{t_i} / alpha_bar_{t_{i-1}}`` (``alpha_bar_{t_0} = 1``).

        Args:
            use_timesteps: the original indices to keep (any order; no duplicates).

        Returns:
            ``(schedule, timestep_map)``: the respaced schedule of ``K`` steps and a LongTensor
            ``(K,)`` mapping its index ``i`` to the original index ``t_i`` (ascending).
        """
        kept = [int(t) for t in use_timesteps]
        if not kept:
            raise ValueError("respace needs at least one timestep")
        if len(set(kept)) != len(kept):
            raise ValueError(f"respace got duplicate timesteps: {sorted(kept)}")
        T = self.num_timesteps
        bad = [t for t in kept if not 0 <= t < T]
        if bad:
            raise ValueError(f"timesteps must be in [0, {T}): got {bad}")
        timestep_map = torch.tensor(sorted(kept), dtype=torch.long)
        return DiscreteSchedule(self._alpha_bar[timestep_map]), timestep_map

    # -- misc -----------------------------------------------------------------------------

    def __repr__(self) -> str:
        ab = self._alpha_bar
        return (
            f"DiscreteSchedule(T={self.num_timesteps}, alpha_bar=[{ab[0].item():.6g} .. "
            f"{ab[-1].item():.6g}])"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DiscreteSchedule):
            return NotImplemented
        return torch.equal(self._alpha_bar, other._alpha_bar)

    __hash__ = None  # type: ignore[assignment]  # mutable-looking tensor payload

    def __getstate__(self) -> dict[str, Any]:
        # Device tables are a cache: never pickle them (they may live on a GPU).
        return {"_alpha_bar": self._alpha_bar}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._alpha_bar = state["_alpha_bar"]
        self._tables = {}


def spaced_timesteps(num_timesteps: int, steps: int, spacing: str = "linspace") -> list[int]:
    """Timesteps of a shortened sampling chain, in descending order (first = noisiest).

    The spacings are diffusers' (``DDIMScheduler.set_timesteps``, ``steps_offset = 0``; see
    also Lin et al. 2023, table 2):

    * ``"linspace"``: ``round(linspace(0, T - 1, steps))``. This is also Improved DDPM's
      section 4 rule ("evenly strided between 1 and T, rounded"). Always includes ``T - 1``
      and ``0`` when ``steps > 1``.
    * ``"leading"``: ``arange(steps) * (T // steps)``; the noisiest step may be well below
      ``T - 1``.
    * ``"trailing"``: ``round(T - arange(steps) * T / steps) - 1``; always starts at ``T - 1``
      (the best choice for few steps).

    ``steps == num_timesteps`` gives the full chain for every spacing.

    Raises:
        ValueError: for ``steps`` outside ``[1, num_timesteps]`` or an unknown spacing.
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
    """The steps a sampler visits, noisiest first, ready for its loop: host floats and one
    device tensor, built once (no host sync per step).

    Attributes:
        timesteps: ``t_0 > ... > t_{K-1}``, original-schedule indices.
        alpha_bar: ``alpha_bar`` at each (Python floats).
        alpha_bar_next: ``alpha_bar`` at the next one; ``1.0`` after the last: sampling
            ends at the clean data (t = 0), where ``x`` is the final x0 estimate.
        t: ``(K, B)`` long tensor on ``x_T``'s device; row ``n`` is ``timesteps[n]``.
    """

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


# --------------------------------------------------------------------------- forward process


def _coef(table: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """``table[t]`` shaped ``(B, 1, ..., 1)`` to broadcast over a tensor of ``ndim`` dims."""
    return table[t.to(table.device)].reshape(-1, *([1] * (ndim - 1)))


def _tables_for(schedule: DiscreteSchedule, x: torch.Tensor) -> ScheduleTables:
    return schedule.tables(x.device, x.dtype)


def q_sample(
    schedule: DiscreteSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x0): ``sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps`` (DDPM eq. 4).

    Args:
        schedule: the noise schedule.
        x0: clean data ``(B, ...)``.
        t: integer timesteps ``(B,)``.
        noise: ``eps``, same shape as ``x0``.
    """
    tab = _tables_for(schedule, x0)
    return (
        _coef(tab.sqrt_alpha_bar, t, x0.ndim) * x0
        + _coef(tab.sqrt_one_minus_alpha_bar, t, x0.ndim) * noise
    )


def predict_x0_from_eps(
    schedule: DiscreteSchedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """``x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)`` (DDPM eq. 15)."""
    tab = _tables_for(schedule, x_t)
    return (
        _coef(tab.sqrt_recip_alpha_bar, t, x_t.ndim) * x_t
        - _coef(tab.sqrt_recipm1_alpha_bar, t, x_t.ndim) * eps
    )


def predict_eps_from_x0(
    schedule: DiscreteSchedule, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor
) -> torch.Tensor:
    """``eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t)``."""
    tab = _tables_for(schedule, x_t)
    return (x_t - _coef(tab.sqrt_alpha_bar, t, x_t.ndim) * x0) / _coef(
        tab.sqrt_one_minus_alpha_bar, t, x_t.ndim
    )


def v_from_eps_x0(
    schedule: DiscreteSchedule, t: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor
) -> torch.Tensor:
    """The v target ``sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0`` (Salimans & Ho 2022).

    Needs no ``x_t``: it is what a v-prediction loss regresses onto.
    """
    tab = _tables_for(schedule, x0)
    return (
        _coef(tab.sqrt_alpha_bar, t, x0.ndim) * eps
        - _coef(tab.sqrt_one_minus_alpha_bar, t, x0.ndim) * x0
    )


def x0_from_v(
    schedule: DiscreteSchedule, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """``x0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v``."""
    tab = _tables_for(schedule, x_t)
    return (
        _coef(tab.sqrt_alpha_bar, t, x_t.ndim) * x_t
        - _coef(tab.sqrt_one_minus_alpha_bar, t, x_t.ndim) * v
    )


def eps_from_v(
    schedule: DiscreteSchedule, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """``eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v``."""
    tab = _tables_for(schedule, x_t)
    return (
        _coef(tab.sqrt_one_minus_alpha_bar, t, x_t.ndim) * x_t
        + _coef(tab.sqrt_alpha_bar, t, x_t.ndim) * v
    )


def q_posterior(
    schedule: DiscreteSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_{t-1} | x_t, x0) (DDPM eq. 6-7).

    Returns:
        ``(mean, variance, log_variance_clipped)``: ``mean`` has ``x_t``'s shape; the
        variances have shape ``(B, 1, ..., 1)`` (broadcastable). At ``t = 0`` the variance
        is 0 and the log-variance is clipped to its value at ``t = 1``.
    """
    tab = _tables_for(schedule, x_t)
    n = x_t.ndim
    mean = _coef(tab.posterior_mean_coef1, t, n) * x0 + _coef(tab.posterior_mean_coef2, t, n) * x_t
    return (
        mean,
        _coef(tab.posterior_variance, t, n),
        _coef(tab.posterior_log_variance_clipped, t, n),
    )


# --------------------------------------------------------------------------- noise


def randn(
    shape: Sequence[int],
    generator: GeneratorArg,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise, reproducible per image.

    Args:
        shape: ``(B, ...)``.
        generator: one ``torch.Generator`` for the whole batch, a list of ``B`` generators
            (image ``i`` is drawn from ``generator[i]``, so it does not depend on the batch
            size or on its position), or ``None`` (the global RNG).
        device: where the result lives. Noise is drawn on each generator's own device and
            moved: a CPU generator gives the same images on any device (at the cost of a
            host-to-device copy per draw; pass CUDA generators to avoid it).
        dtype: the result's dtype. Half-precision noise is drawn in float32 and cast, so
            it matches the float32 stream.
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
