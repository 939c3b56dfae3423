"""The discrete variance-preserving noise schedule and its coefficient tables.

*Notation* (Ho et al. 2020, "DDPM"; Nichol & Dhariwal 2021, "Improved DDPM"):
``alpha_bar`` is the cumulative product of ``alpha = 1 - beta``; the forward process is
``x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps`` with ``eps ~ N(0, I)``;
``v = sqrt(alpha_bar_t) * eps - sqrt(1 - alpha_bar_t) * x0`` (Salimans & Ho 2022);
``snr = alpha_bar / (1 - alpha_bar)``.

Indexing follows diffusers: table index ``t = 0 .. T-1`` holds the paper's step ``t + 1``,
so ``alpha_bar_prev[0] = 1`` (the clean data) and the last index is the noisiest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["DiscreteSchedule", "ScheduleTables"]


@dataclasses.dataclass(frozen=True)
class ScheduleTables:
    """Per-timestep coefficient tables, each ``(T,)`` on one device and dtype; ``posterior_*``
    describe q(x_{t-1} | x_t, x0) (DDPM eq. 6-7), the log variance clipped at ``t = 0``."""

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
    """A discrete-time variance-preserving noise schedule, defined by ``alphas_cumprod``:
    ``alpha_bar`` at indices ``0 .. T-1``, strictly decreasing in (0, 1) (a ``ValueError``
    otherwise), stored as a float64 CPU tensor."""

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
        """The schedule of ``beta_1 .. beta_T`` (each in (0, 1)): ``alpha_bar_t = prod_{s <= t}
        (1 - beta_s)`` (DDPM section 2), in float64."""
        b = _as_float64(betas)
        if b.ndim != 1 or b.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(b.shape)}")
        if not bool(((b > 0) & (b < 1)).all()):
            raise ValueError("betas must lie in (0, 1)")
        return cls(torch.cumprod(1.0 - b, dim=0))

    # Derived quantities: float64 CPU tensors, fresh on every access.
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

    def tables(
        self, device: torch.device | str | None = "cpu", dtype: torch.dtype = torch.float32
    ) -> ScheduleTables:
        """The coefficient tables on ``device`` in ``dtype``: computed in float64 on the CPU,
        cast once, and the same object on later calls (no per-step casting or allocation)."""
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

    def respace(self, use_timesteps: Iterable[int]) -> tuple[DiscreteSchedule, torch.Tensor]:
        """Keep the timesteps ``use_timesteps`` (any order, no duplicates; Improved DDPM,
        section 4): return the schedule of ``alpha_bar`` at the kept ``t_1 < ... < t_K`` (its
        betas are ``1 - alpha_bar_{t_i} / alpha_bar_{t_{i-1}}``, ``alpha_bar_{t_0} = 1``) and
        a LongTensor ``(K,)`` mapping its index ``i`` to the original index ``t_i``."""
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
