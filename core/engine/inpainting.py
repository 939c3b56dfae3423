"""Inpainting through the denoiser's ``x0`` estimate, so that every sampler gets it.

Each method is a denoiser wrapper, like guidance (:mod:`denoisekit.engine.steering`): it
returns the sampler a corrected ``x0`` and the ``eps`` consistent with it
(``eps = (x_t - sqrt(ab_t) x0) / sqrt(1 - ab_t)``), so the sampler's own update uses the
corrected estimate. ``known`` is the input, ``mask`` is 1 where pixels are regenerated and
0 where they are kept; ``P`` below keeps the known pixels.

* ``replacement`` (:class:`~denoisekit.engine.steering.InpaintingDenoiser`): the known
  pixels of ``x_t`` are reset to the input noised to ``t`` before each evaluation.
* ``ddnm`` (Wang et al. 2023, "Zero-Shot Image Restoration Using Denoising Diffusion
  Null-Space Model", eq. 11 and Algorithm 1): the range–null-space decomposition
  ``x0 <- A^+ y + (I - A^+ A) x0`` with ``A = P``: the known pixels of the estimate are the
  input, the others the network's. With a DDPM step (DDIM ``eta = 1``) this is exactly the
  paper's Algorithm 1; its time travel is ``--repaint``'s schedule (:mod:`~.repaint`).
* ``pigdm`` (Song et al. 2023, "Pseudoinverse-Guided Diffusion Models for Inverse
  Problems", eq. 7, noiseless): ``x0 <- m + (s^2 / a) J^T P^T (y - P m) / r_t^2`` with
  ``m = E[x0 | x_t]`` the network's estimate, ``J = dm/dx_t`` (one vector–Jacobian product
  through the network), ``a = sqrt(ab_t)``, ``s^2 = 1 - ab_t`` and the paper's
  ``r_t^2 = 1 - ab_t`` (the posterior variance of unit-variance data). Tweedie's formula
  turns its likelihood score into this ``x0``.
* ``mmps`` (Rozet et al. 2024, "Learning Diffusion Priors from Observations by Expectation
  Maximization", moment matching posterior sampling): the same with the covariance
  ``Cov[x0 | x_t] = (s^2 / a) J`` of Tweedie's second-order formula in place of
  ``r_t^2 I``: ``x0 <- m + (s^2 / a) J^T P^T w`` with ``(P Cov P^T) w = y - P m`` solved by
  ``iterations`` conjugate-gradient steps (one VJP each). For Gaussian data, where ``J`` is
  exact, this is ``E[x0 | x_t, y]`` once CG has converged (at most one iteration per known
  pixel): the sampler then samples the exact conditional.
* ``dps`` (Chung et al. 2023, "Diffusion Posterior Sampling for General Noisy Inverse
  Problems", Algorithm 1 with the step ``zeta_i = zeta' / ||y - P m||`` of their
  experiments): ``x_{t-1} <- x'_{t-1} - zeta_i grad_{x_t} ||y - P m||^2``, one VJP a step
  and no covariance: an approximation (it does not sample the exact conditional on
  Gaussian data). As an ``x0``: ``x0 <- m + (2 zeta' / c_t) J^T P^T (y - P m) / ||y - P m||``
  with ``c_t`` the ``x0`` coefficient of the one-step DDPM posterior mean
  (``posterior_mean_coef1``; at the nearest integer timestep), so that with a DDPM step
  on every timestep (DDIM ``eta = 1``) this is exactly the paper's update, and a strided
  sampler moves about as far in one step as the full chain in the steps it strides.
  ``zeta'`` is ``scale`` (the paper's inpainting experiments: 1).

``ddnm``, ``pigdm`` and ``mmps`` also set the known pixels of the estimate to the input
(DDNM's range-space part), and the edit re-imposes them on the result.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from denoisekit.diffusion import coefficient, coefficient_at
from denoisekit.engine.masks import conditioning
from denoisekit.engine.steering import InpaintingDenoiser
from denoisekit.errors import DataError

#: The zero-shot inpainting methods of ``denoisekit edit --inpaint``, for any model.
METHODS: tuple[str, ...] = ("replacement", "ddnm", "pigdm", "mmps", "dps")
#: ``--inpaint model``: the conditioning of a model trained with ``[inpainting]``
#: (:class:`ConditionedModel`).
TRAINED = "model"


class ConditionedModel(nn.Module):
    """A backbone trained with ``[inpainting]`` as a plain one: ``forward(x_t, time, cond)``
    calls it on ``[x_t, known * (1 - mask), mask]``. Without ``known`` the mask is
    all-unknown (plain sampling). A batch that is a multiple of ``known``'s (guidance's
    doubled batch) repeats the conditioning. ``scale`` other than 1 guides on the kept
    pixels as classifier-free guidance guides on a class (Ho & Salimans 2022), the
    all-unknown mask (trained with ``p_all_unknown``) as the unconditional model:
    ``out(blank) + scale (out(known) - out(blank))``, both in one batch."""

    def __init__(
        self,
        model: nn.Module,
        known: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.time_input = getattr(model, "time_input", "timestep")
        self.num_classes = getattr(model, "num_classes", None)
        self.extra = None if known is None or mask is None else conditioning(known, mask)
        self.scale = scale
        self.blank: torch.Tensor | None = None

    def _blank(self, x_t: torch.Tensor) -> torch.Tensor:
        """The all-unknown conditioning, made once per batch shape."""
        blank = self.blank
        if blank is None or blank.shape[0] != x_t.shape[0] or blank.device != x_t.device:
            ones = torch.ones_like(x_t[:, :1])
            blank = self.blank = conditioning(torch.zeros_like(x_t), ones)
        return blank.to(x_t.dtype)

    def forward(self, x_t: torch.Tensor, time: torch.Tensor, *cond: Any) -> torch.Tensor:
        extra = self.extra
        if extra is None:
            return self.model(torch.cat([x_t, self._blank(x_t)], dim=1), time, *cond)
        if extra.shape[0] != x_t.shape[0]:
            if x_t.shape[0] % extra.shape[0]:
                raise ValueError(f"a batch of {x_t.shape[0]} for {extra.shape[0]} known images")
            extra = extra.repeat(x_t.shape[0] // extra.shape[0], 1, 1, 1)
        extra = extra.to(x_t.dtype)
        if self.scale == 1.0:
            return self.model(torch.cat([x_t, extra], dim=1), time, *cond)
        # guidance on the kept pixels: unconditioned + scale (conditioned - unconditioned),
        # both in one batch
        pair = torch.cat(
            [torch.cat([x_t, extra], dim=1), torch.cat([x_t, self._blank(x_t)], dim=1)]
        )
        twice = [torch.cat([c, c]) if torch.is_tensor(c) else c for c in cond]
        if torch.is_tensor(time) and time.ndim:
            time = torch.cat([time, time])
        known, blank = self.model(pair, time, *twice).chunk(2)
        return torch.lerp(blank, known, self.scale)


def conditioned(
    denoiser: Any, known: torch.Tensor, mask: torch.Tensor, scale: float | None = None
) -> Any:
    """``denoiser`` (over a :class:`ConditionedModel`) conditioned on ``known`` and
    ``mask`` instead, guided with ``scale`` (None: the model's own, the run's
    ``[inpainting] guidance``); the known pixels are re-imposed by the edit."""
    model = getattr(denoiser, "model", None)
    if not isinstance(model, ConditionedModel):
        raise DataError(
            "--inpaint model needs a run trained with an [inpainting] table; on this run use "
            "replacement, ddnm, pigdm, mmps or dps"
        )
    clone = copy.copy(denoiser)
    clone.model = ConditionedModel(
        model.model, known, mask, model.scale if scale is None else scale
    )
    return clone


def _coefficients(denoiser: Any, x_t: torch.Tensor, t: torch.Tensor) -> tuple[Any, Any]:
    """``sqrt(ab_t)`` and ``sqrt(1 - ab_t)``, shaped to broadcast against ``x_t``."""
    tables = denoiser.schedule.tables(x_t.device, x_t.dtype)
    return (
        coefficient_at(tables, "sqrt_alpha_bar", t, x_t.ndim),
        coefficient_at(tables, "sqrt_one_minus_alpha_bar", t, x_t.ndim),
    )


def _timesteps(t: torch.Tensor | int, x_t: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, device=x_t.device)
    return t.expand(x_t.shape[0]) if t.ndim == 0 else t


def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-image inner products, shaped ``(B, 1, ..., 1)``."""
    return (u * v).sum(dim=tuple(range(1, u.ndim)), keepdim=True)


class ProjectionDenoiser(InpaintingDenoiser):
    """DDNM: the known pixels of the ``x0`` estimate are the input (see the module)."""

    def predict(
        self, x_t: torch.Tensor, t: torch.Tensor | int, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t = _timesteps(t, x_t)
        eps, m = self.inner.predict(x_t, t, cond)
        return self.consistent(x_t, t, eps, m, m)

    def consistent(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        eps: torch.Tensor,
        m: torch.Tensor,
        x0: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(eps, x0)`` with the known pixels of ``x0`` set to the input and ``eps``
        re-derived from it (``eps - a / s (x0 - m)``: unchanged where ``x0 == m``)."""
        a, s = _coefficients(self, x_t, t)
        x0 = torch.lerp(self.known, x0, self.mask)
        return eps - (a / s) * (x0 - m), x0


class PosteriorDenoiser(ProjectionDenoiser):
    """Π-GDM (``iterations = 0``) or MMPS (``iterations`` CG steps); see the module.

    Attributes:
        num_backward: vector–Jacobian products through the network so far (each costs
            about two forward evaluations); ``num_evaluations`` counts the forwards.
    """

    def __init__(
        self,
        denoiser: Any,
        known: torch.Tensor,
        mask: torch.Tensor,
        noise: torch.Tensor | None = None,
        *,
        iterations: int = 0,
    ) -> None:
        super().__init__(denoiser, known, mask, noise)
        if iterations < 0:
            raise ValueError(f"iterations must be >= 0: {iterations}")
        self.iterations = iterations
        self.num_backward = 0

    def predict(
        self, x_t: torch.Tensor, t: torch.Tensor | int, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t = _timesteps(t, x_t)
        a, s = _coefficients(self, x_t, t)
        keep = 1.0 - self.mask
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            eps, m = self.inner.predict(x, t, cond)

            def vjp(v: torch.Tensor) -> torch.Tensor:
                self.num_backward += 1
                (g,) = torch.autograd.grad(m, x, v, retain_graph=True)
                return g

            residual = keep * (self.known - m.detach())
            if self.iterations == 0:
                w = residual / (s * s)  # r_t^2 = 1 - ab_t
            else:
                w = self.solve(lambda v: keep * (s * s / a) * vjp(keep * v), residual)
            correction = vjp(w)
        x0 = m.detach() + (s * s / a) * correction
        return self.consistent(x_t, t, eps.detach(), m.detach(), x0)

    def solve(self, cov: Any, b: torch.Tensor) -> torch.Tensor:
        """``iterations`` conjugate-gradient steps on ``cov(w) = b`` from ``w = 0``, per
        image; a direction of non-positive curvature (a network's Jacobian need not be
        positive definite) stops that image's updates."""
        w, r = torch.zeros_like(b), b
        p, rs = r, _dot(r, r)
        for _ in range(self.iterations):
            cp = cov(p)
            curvature = _dot(p, cp)
            ok = curvature > 0
            alpha = torch.where(ok, rs / torch.where(ok, curvature, 1.0), 0.0)
            w, r = w + alpha * p, r - alpha * cp
            rs_next = _dot(r, r)
            p = r + torch.where(rs > 0, rs_next / torch.where(rs > 0, rs, 1.0), 0.0) * p
            rs = rs_next
        return w


class GradientDenoiser(InpaintingDenoiser):
    """DPS (see the module): the network's ``x0`` moved along the gradient of the
    known-pixel error through the network, ``J^T P^T (y - P m) / ||y - P m||``.

    Attributes:
        num_backward: vector–Jacobian products so far (one per evaluation).
    """

    def __init__(
        self,
        denoiser: Any,
        known: torch.Tensor,
        mask: torch.Tensor,
        noise: torch.Tensor | None = None,
        *,
        step: float = 1.0,
    ) -> None:
        super().__init__(denoiser, known, mask, noise)
        if not 0.0 <= step < float("inf"):
            raise ValueError(f"the DPS step must be finite and >= 0: {step}")
        self.step = step
        self.num_backward = 0

    def predict(
        self, x_t: torch.Tensor, t: torch.Tensor | int, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t = _timesteps(t, x_t)
        a, s = _coefficients(self, x_t, t)
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            eps, m = self.inner.predict(x, t, cond)
            residual = (1.0 - self.mask) * (self.known - m.detach())
            norm = _dot(residual, residual).sqrt()
            direction = residual / torch.where(norm > 0, norm, 1.0)  # 0 where all is unknown
            self.num_backward += 1
            (g,) = torch.autograd.grad(m, x, direction)
        tables = self.schedule.tables(x_t.device, x_t.dtype)
        step = t.round().long() if t.dtype.is_floating_point else t
        c_t = coefficient(tables.posterior_mean_coef1, step, x_t.ndim)
        x0 = m.detach() + (2.0 * self.step / c_t) * g
        return eps.detach() - (a / s) * (x0 - m.detach()), x0


def inpainting_denoiser(
    method: str,
    denoiser: Any,
    known: torch.Tensor,
    mask: torch.Tensor,
    noise: torch.Tensor,
    *,
    iterations: int = 2,
    scale: float | None = None,
) -> InpaintingDenoiser:
    """The denoiser of ``method`` (one of :data:`METHODS`, or :data:`TRAINED`) over
    ``denoiser``; ``scale`` is ``dps``'s step ``zeta'`` (None: 1, the paper's) and
    ``model``'s guidance scale (None: the run's ``[inpainting] guidance``)."""
    if method == TRAINED:
        return conditioned(denoiser, known, mask, scale)
    if method == "replacement":
        return InpaintingDenoiser(denoiser, known, mask, noise)
    if method == "ddnm":
        return ProjectionDenoiser(denoiser, known, mask, noise)
    if method == "dps":
        return GradientDenoiser(denoiser, known, mask, noise, step=1.0 if scale is None else scale)
    if method in ("pigdm", "mmps"):
        count = 0 if method == "pigdm" else iterations
        return PosteriorDenoiser(denoiser, known, mask, noise, iterations=count)
    raise ValueError(f"unknown inpainting method {method!r}; one of {', '.join(METHODS)}, model")
