"""A test fixture: a sampler plugin as written for denoisekit 0.1.0 — the built-in DDIM
of that release (``git show 97522d3:plugins/samplers/ddim.py``), kept as it was but for
its registered name (``ddim-v01``, beside the built-in ``ddim``) and this paragraph. Its
``sample(denoiser, shape, *, generator, device, cond, x_T, callback, dtype)`` is 0.1's
sampler contract; 0.2.0 must refuse it when the registry is built, in one line.

DDIM sampling (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models").

*Notation* (paper eq. 12, with ``alpha`` there = our ``alpha_bar``): from timestep ``t`` to
the next kept timestep ``s < t`` (``alpha_bar_s = 1`` after the last one),

    x0^  = the denoiser's estimate (clipped to [-1, 1] when ``clip_denoised``)
    eps^ = (x_t - sqrt(alpha_bar_t) x0^) / sqrt(1 - alpha_bar_t)
    x_s  = sqrt(alpha_bar_s) x0^ + sqrt(1 - alpha_bar_s - sigma²) eps^ + sigma z,
    sigma = eta sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_s)
    (eq. 16).

``eta = 0`` is the deterministic DDIM; ``eta = 1`` is exactly DDPM ancestral sampling with
the posterior ("fixed_small") variance on the same timesteps. ``eps^`` is recomputed from
the clipped ``x0^`` (as improved-diffusion does) so that this equivalence also holds with
clipping. The step goes to the next timestep of the list, which for ``leading`` spacing is
diffusers' ``t - T // steps``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch

from denoisekit import ComponentSpec, DenoiserLike, hookimpl
from denoisekit.config import option, unit_interval
from denoisekit.diffusion import SPACINGS, batch_timesteps, randn, spaced_timesteps, start_noise


@attrs.frozen(kw_only=True)
class DDIMConfig:
    """Options of the DDIM sampler."""

    steps: int = option(
        50,
        "number of sampling steps (at most the schedule's timesteps)",
        validator=[attrs.validators.instance_of(int), attrs.validators.gt(0)],
    )
    eta: float = option(
        0.0,
        "noise scale: 0 deterministic DDIM, 1 DDPM ancestral (fixed-small variance)",
        validator=unit_interval,
    )
    spacing: str = option(
        "leading",
        "which timesteps to visit, as diffusers defines them: leading, trailing, linspace",
        validator=attrs.validators.in_(SPACINGS),
    )
    clip_denoised: bool = option(
        True, "clip each x0 prediction to [-1, 1]", validator=attrs.validators.instance_of(bool)
    )


class DDIMSampler:
    """DDIM sampler; see the module docstring. Build with :func:`build_ddim`."""

    def __init__(self, config: DDIMConfig) -> None:
        self.config = config

    def timesteps(self, num_timesteps: int) -> list[int]:
        """The original-schedule timesteps visited, noisiest first.

        Raises:
            ValueError: when ``steps`` exceeds ``num_timesteps``.
        """
        return spaced_timesteps(num_timesteps, self.config.steps, self.config.spacing)

    def num_evaluations(self, num_timesteps: int) -> int:
        """One network evaluation per step."""
        return len(self.timesteps(num_timesteps))

    @torch.no_grad()
    def sample(
        self,
        denoiser: DenoiserLike,
        shape: Sequence[int],
        *,
        generator: torch.Generator | Sequence[torch.Generator] | None,
        device: torch.device | str = "cpu",
        cond: torch.Tensor | None = None,
        x_T: torch.Tensor | None = None,
        callback: Callable[[dict[str, Any]], None] | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Draw samples.

        Args:
            denoiser: gives ``(eps, x0)`` estimates at original-schedule timesteps.
            shape: ``(B, C, H, W)`` (any ``(B, ...)``).
            generator: a generator or one per image (see :func:`denoisekit.diffusion.randn`).
                With ``eta = 0`` only ``x_T`` is drawn.
            device: where sampling runs.
            cond: conditioning passed to the denoiser.
            x_T: the starting noise (used instead of a draw); moved to ``device``.
            callback: called after each step's prediction with ``{"i": step index from 0,
                "t": original timestep (int), "x_t": the current sample, "x0": the clipped
                x0 estimate}``.
            dtype: the sampling dtype; default ``x_T``'s dtype, else float32.

        Returns:
            Samples of ``shape`` clamped to [-1, 1].

        Raises:
            ValueError: when ``steps`` exceeds the schedule's number of timesteps.
        """
        shape = tuple(int(s) for s in shape)
        device = torch.device(device)
        alpha_bar = denoiser.schedule.alphas_cumprod.tolist()  # float64 values, host side
        ts = self.timesteps(len(alpha_bar))
        eta = self.config.eta

        # Step tables (python floats: kernel scalars, no per-step device tensors or syncs).
        sqrt_ab, sqrt_1m_ab, c_x0, c_eps, sigma = [], [], [], [], []
        for n, t in enumerate(ts):
            ab_t = alpha_bar[t]
            ab_s = alpha_bar[ts[n + 1]] if n + 1 < len(ts) else 1.0
            var = eta**2 * (1.0 - ab_s) / (1.0 - ab_t) * (1.0 - ab_t / ab_s)  # eq. (16)
            sqrt_ab.append(math.sqrt(ab_t))
            sqrt_1m_ab.append(math.sqrt(1.0 - ab_t))
            c_x0.append(math.sqrt(ab_s))
            c_eps.append(math.sqrt(max(1.0 - ab_s - var, 0.0)))
            sigma.append(math.sqrt(var))
        K, B = len(ts), shape[0]
        t_batch = batch_timesteps(ts, B, device)

        x = start_noise(shape, generator, device=device, dtype=dtype, x_T=x_T)
        dtype = x.dtype

        for n in range(K):
            eps, x0 = denoiser.predict(x, t_batch[n], cond)
            if self.config.clip_denoised:
                x0 = x0.clamp(-1.0, 1.0)
                eps = (x - sqrt_ab[n] * x0) / sqrt_1m_ab[n]
            if callback is not None:
                callback({"i": n, "t": ts[n], "x_t": x, "x0": x0})
            # Eq. (12): "predicted x0" + "direction pointing to x_t" + random noise.
            x = c_x0[n] * x0 + c_eps[n] * eps
            if sigma[n] > 0.0:
                x = x + sigma[n] * randn(shape, generator, device=device, dtype=dtype)
        return x.clamp(-1.0, 1.0)

    def __repr__(self) -> str:
        return f"DDIMSampler({self.config!r})"


def build_ddim(config: DDIMConfig) -> DDIMSampler:
    """Build the DDIM sampler."""
    return DDIMSampler(config)


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            kind="sampler",
            name="ddim-v01",
            config=DDIMConfig,
            build=build_ddim,
            summary="DDIM (Song et al. 2021): deterministic at eta = 0, DDPM-like at eta = 1.",
        )
    ]
