"""Steered generation through the denoiser, so that every sampler gets it without knowing.

* :class:`GuidedDenoiser`: classifier-free guidance (Ho & Salimans 2022). One forward of
  the doubled batch ``[x, x]`` with labels ``[cond, null]`` (``NULL_CLASS`` is the null class
  of a class-conditional backbone), combined as ``u + w (c - u)`` on the network output;
  optional rescaling (Lin et al. 2023, eq. 15-16) and an interval of timesteps outside
  which the conditional output is used as it is (Kynkäänniemi et al. 2024).
* :class:`InpaintingDenoiser`: the replacement method. Before each network evaluation the
  known pixels of ``x_t`` are set to the input noised to ``t`` with the run's own starting
  noise (``sqrt(ab_t) x_known + sqrt(1 - ab_t) x_T``), and the known pixels of the ``x0``
  estimate to the input, so the result keeps them exactly.
* :func:`truncated` (img2img, SDEdit by Meng et al. 2022): the same denoiser over the
  schedule's first ``t + 1`` timesteps, so that a sampler starts at timestep ``t``.

Guidance scales 0 and 1 run one plain forward (unconditional or conditional) of the
batch: exactly the unguided predictions.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from denoisekit.contracts import NULL_CLASS
from denoisekit.denoiser import PIXEL_RANGE, Denoiser
from denoisekit.diffusion import DiscreteSchedule, predict_eps_from_x0, q_sample


class GuidedDenoiser(Denoiser):
    """A :class:`Denoiser` with classifier-free guidance of ``scale`` (see the module).

    Args:
        rescale: ``phi`` of guidance rescaling; 0 is off.
        interval: ``(low, high)`` fractions of ``T``: guidance applies where
            ``low <= t / T <= high`` (per image, on the device: no host sync).
    """

    def __init__(
        self,
        model: Any,
        schedule: Any,
        prediction_type: str = "eps",
        *,
        scale: float,
        rescale: float = 0.0,
        interval: tuple[float, float] = (0.0, 1.0),
        name: str | None = None,
        data_range: tuple[float, float] | None = PIXEL_RANGE,
    ) -> None:
        super().__init__(model, schedule, prediction_type, name=name, data_range=data_range)
        self.scale, self.rescale, self.interval = float(scale), float(rescale), interval

    def network(self, x_t: torch.Tensor, t: torch.Tensor, time: torch.Tensor, cond: Any) -> Any:
        if cond is None:
            raise ValueError("guidance needs class labels (cond)")
        if self.scale == 1.0:
            return self.model(x_t, time, cond)
        null = torch.full_like(cond, NULL_CLASS)
        if self.scale == 0.0:
            return self.model(x_t, time, null)
        both = self.model(torch.cat([x_t, x_t]), torch.cat([time, time]), torch.cat([cond, null]))
        c, u = both.chunk(2)
        guided = u + self.scale * (c - u)
        if self.rescale > 0.0:
            dims = tuple(range(1, guided.ndim))
            ratio = c.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
            guided = self.rescale * guided * ratio + (1.0 - self.rescale) * guided
        low, high = self.interval
        if (low, high) != (0.0, 1.0):
            frac = t.to(torch.float64) / self.schedule.num_timesteps
            inside = ((frac >= low) & (frac <= high)).view(-1, *[1] * (guided.ndim - 1))
            guided = torch.where(inside, guided, c)
        return guided


class InpaintingDenoiser:
    """Keep the known pixels (``mask == 0``) of ``known`` at every step; see the module.

    Args:
        denoiser: the denoiser to wrap (guided or not).
        known: the input images ``(B, C, H, W)`` in [-1, 1].
        mask: ``1`` where pixels are regenerated, ``0`` where they are kept; broadcast
            against ``known``.
        noise: the starting noise ``x_T`` of the same images.
    """

    def __init__(
        self, denoiser: Denoiser, known: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor
    ) -> None:
        self.inner = denoiser
        self.known, self.mask, self.noise = known, mask.to(known.dtype), noise

    @property
    def schedule(self) -> DiscreteSchedule:
        return self.inner.schedule

    @property
    def model(self) -> Any:
        return self.inner.model

    @property
    def num_evaluations(self) -> int:
        return self.inner.num_evaluations

    @property
    def data_range(self) -> tuple[float, float] | None:
        return getattr(self.inner, "data_range", PIXEL_RANGE)

    def predict(
        self, x_t: torch.Tensor, t: torch.Tensor | int, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        known_t = q_sample(self.schedule, self.known, t, self.noise)
        x_t = torch.lerp(known_t, x_t, self.mask)
        _, x0 = self.inner.predict(x_t, t, cond)
        x0 = torch.lerp(self.known, x0, self.mask)
        return predict_eps_from_x0(self.schedule, x_t, t, x0), x0


def truncated(denoiser: Denoiser, timestep: int) -> Denoiser:
    """The same denoiser over timesteps ``0 .. timestep`` (a prefix of its schedule:
    indices keep their meaning), so that a sampler starts at ``timestep``."""
    clone = copy.copy(denoiser)
    clone.schedule = DiscreteSchedule(denoiser.schedule.alphas_cumprod[: timestep + 1])
    return clone
