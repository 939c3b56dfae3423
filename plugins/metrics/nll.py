"""Negative log-likelihood in bits/dim from the variational bound (``[metrics.nll]``).

The bound of Ho et al. 2020 (eq. 5, section 3.3) on ``-log p(x0)`` of 8-bit data, computed
term by term as improved-diffusion's ``calc_bpd_loop`` does (Nichol & Dhariwal 2021):

    L = L_T + sum_{t=1}^{T-1} L_t + L_0                                      (bits/dim)

*Notation* (diffusers indexing: table index ``t`` is the paper's step ``t + 1``):
``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps`` with one fresh ``eps`` per image
and term; ``x0_hat`` the denoiser's x0 estimate at ``(x_t, t)`` (clipped to [-1, 1] when
``clip_denoised``); ``mu~(x0, x_t)`` and ``beta~_t`` the mean and variance of the true
posterior q(x_{t-1} | x_t, x0) (DDPM eq. 6-7).

* Prior ``L_T = KL(q(x_T | x0) || N(0, I))``, in closed form from x0.
* ``L_t = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))`` for index ``t >= 1``, a KL between
  Gaussians: ``p`` has mean ``mu~(x0_hat, x_t)`` and the fixed variance of ``variance``:
  ``fixed_small`` = ``beta~_t`` (the posterior variance) or ``fixed_large`` = ``beta_t``
  (improved-diffusion's ``FIXED_SMALL`` / ``FIXED_LARGE``).
* Decoder ``L_0 = -log2 P(x0 | x_1)`` with the discretized Gaussian of DDPM eq. 13: the
  mass of N(x0_hat, sigma_1²) on the 8-bit bin of each value (width 2/255; the edge bins
  extend to ±inf). ``sigma_1² = beta~`` at paper step 2 for both variances, as in
  improved-diffusion. The CDF is the exact normal CDF (``torch.special.ndtr``), where
  improved-diffusion uses a tanh approximation (differences < 1e-3 in the CDF).

Every term is averaged over dimensions and divided by ``ln 2``; the metric is the mean
over ``num_images`` held-out images (the recipe's data with ``train=False``, rounded to
8 bits first, as the discretized decoder assumes). Class-conditional models are
evaluated on each image's own label (a conditional likelihood).

**Estimator with ``steps = K``** (``K`` network evaluations per image instead of
``T``): ``L_T`` and the decoder ``L_0`` stay exact; the ``T - 1`` KL terms are split into
``K - 1`` contiguous, evenly sized ranges of ``1 .. T-1`` (stratified sampling: ``np.
array_split``), and for each image and range one index ``t`` is drawn uniformly in the range
and its ``L_t`` counted ``size of the range`` times. Each range's contribution is then an
unbiased estimate of its sum, so the estimate is unbiased for the full bound: only its
variance grows as ``K`` shrinks (``L_t`` is steep at small ``t``, so it averages out over
images more slowly). With ``K >= T`` it is the full bound itself. Deterministic,
evenly spaced indices with re-weighting were rejected: on the steep profile near ``t = 1``
they are biased by 25% at ``K = 100``, ``T = 1000``. Use a small ``K`` to follow
training, and the full bound (``steps`` unset) for final numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import numpy as np
import torch

from denoisekit import CheckContext, ComponentSpec, Problem, hookimpl
from denoisekit.config import int_at_least, option
from denoisekit.contracts import MetricContext
from denoisekit.denoiser import eval_mode
from denoisekit.diffusion import VARIANCES, q_sample
from denoisekit.errors import DenoisekitError
from denoisekit.images import quantize

_LN2 = math.log(2.0)


@attrs.frozen(kw_only=True)
class NLLConfig:
    """Options of ``[metrics.nll]``."""

    steps: int | None = option(
        None,
        "network evaluations per image: None = the full bound (all T terms; use for final "
        "numbers), K = decoder + one KL term drawn in each of K-1 even ranges (unbiased)",
        validator=int_at_least(2, optional=True),
    )
    num_images: int | None = option(
        1000,
        "held-out images to average over (a fixed seeded subset); None = all",
        validator=int_at_least(1, optional=True),
    )
    batch_size: int | None = option(
        None,
        "images per batch; None = the evaluation's batch size",
        validator=int_at_least(1, optional=True),
    )
    variance: str = option(
        "fixed_small",
        "variance of p(x_{t-1}|x_t): fixed_small (posterior variance) or fixed_large (beta_t)",
        validator=attrs.validators.in_(VARIANCES),
    )
    clip_denoised: bool = option(
        True, "clip each x0 estimate to [-1, 1]", validator=attrs.validators.instance_of(bool)
    )
    quantize: bool = option(
        True,
        "round the data to 8 bits first (the decoder is a distribution on 8-bit values)",
        validator=attrs.validators.instance_of(bool),
    )


# --------------------------------------------------------------------------- the bound


def bound_strata(num_timesteps: int, k: int | None) -> list[tuple[int, int]]:
    """The timestep ranges the bound is evaluated on (see the module docstring).

    Returns:
        Inclusive ranges ``(lo, hi)``, noisiest first, ending with ``(0, 0)`` (the
        decoder); one timestep per range is evaluated and weighted by the range's size.
        ``k`` None (or ``>= T``): every timestep alone, the full bound.
    """
    T = int(num_timesteps)
    if k is None or k >= T:
        return [(t, t) for t in range(T - 1, -1, -1)]
    if k < 2:
        raise ValueError(f"'steps' must be >= 2 (the decoder and one KL term): {k}")
    parts = np.array_split(np.arange(1, T), k - 1)  # contiguous, sizes differ by <= 1
    return [(int(p[0]), int(p[-1])) for p in reversed(parts)] + [(0, 0)]


def draw_timesteps(
    strata: Sequence[tuple[int, int]],
    batch: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """One timestep per range and image, uniform in the range: a ``(K, batch)`` LongTensor."""
    rows = []
    for lo, hi in strata:
        if lo == hi:
            rows.append(torch.full((batch,), lo, dtype=torch.long, device=device))
        else:
            rows.append(torch.randint(lo, hi + 1, (batch,), generator=generator, device=device))
    return torch.stack(rows)


def discretized_gaussian_log_likelihood(
    x0: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor | float
) -> torch.Tensor:
    """``log P(x0)`` of N(mean, exp(log_scale)²) discretized to the 8-bit bins (DDPM eq. 13).

    ``x0`` holds values on the grid ``k / 127.5 - 1``; a value's bin is ``x0 ± 1/255``,
    except that the lowest bin extends to -inf and the highest to +inf.
    """
    inv_std = torch.exp(-torch.as_tensor(log_scale, dtype=mean.dtype, device=mean.device))
    centered = x0 - mean
    plus_in = inv_std * (centered + 1.0 / 255.0)
    min_in = inv_std * (centered - 1.0 / 255.0)
    log_cdf_plus = torch.special.log_ndtr(plus_in)  # lowest bin: P(X <= x0 + 1/255)
    log_one_minus_cdf_min = torch.special.log_ndtr(-min_in)  # highest: P(X >= x0 - 1/255)
    cdf_delta = torch.special.ndtr(plus_in) - torch.special.ndtr(min_in)
    log_delta = torch.log(cdf_delta.clamp(min=1e-12))
    return torch.where(
        x0 < -0.999,
        log_cdf_plus,
        torch.where(x0 > 0.999, log_one_minus_cdf_min, log_delta),
    )


def _log_variances(schedule: Any, variance: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lv_q, lv_p)``: float64 log-variances of the true posterior and of the model."""
    host = schedule.tables("cpu", torch.float64)
    lv_q = host.posterior_log_variance_clipped
    lv_p = lv_q.clone() if variance == "fixed_small" else torch.log(host.betas)
    lv_p[0] = lv_q[0]  # the decoder's variance: beta~ at paper step 2, both variances
    return lv_q, lv_p


@torch.no_grad()
def bound_terms_bpd(
    denoiser: Any,
    x0: torch.Tensor,
    timesteps: Sequence[int] | torch.Tensor,
    *,
    variance: str = "fixed_small",
    clip_denoised: bool = True,
    generator: torch.Generator | None = None,
    cond: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The terms of the bound, in bits/dim, for a batch of 8-bit data ``x0`` in [-1, 1].

    Args:
        denoiser: a :class:`~denoisekit.denoiser.Denoiser` (``predict`` and ``schedule``).
        x0: the data ``(B, ...)`` on the device to compute on, values on the 8-bit grid.
        timesteps: ``K`` indices (one per row, shared by the batch) or a ``(K, B)`` tensor
            (one per row and image). Index 0 gives the decoder term ``L_0``, ``t >= 1`` the
            KL term ``L_t``.
        variance: ``fixed_small`` or ``fixed_large``.
        clip_denoised: clip the x0 estimates to [-1, 1].
        generator: draws the noise (on ``x0``'s device).
        cond: conditioning passed to the denoiser.

    Returns:
        ``(prior, terms)``: ``L_T`` of shape ``(B,)`` and the ``(K, B)`` terms, all on
        ``x0``'s device (no host sync here).
    """
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {', '.join(VARIANCES)}: {variance!r}")
    schedule = denoiser.schedule
    T = schedule.num_timesteps
    B, dims = x0.shape[0], tuple(range(1, x0.ndim))
    device, dtype = x0.device, x0.dtype
    acc = torch.promote_types(dtype, torch.float32)  # terms in float32 at least
    if isinstance(timesteps, torch.Tensor):
        t_rows = timesteps.to(device=device, dtype=torch.long)
        if t_rows.ndim == 1:
            t_rows = t_rows.view(-1, 1).expand(-1, B)
    else:
        t_rows = torch.tensor([int(t) for t in timesteps], device=device).view(-1, 1)
        t_rows = t_rows.expand(-1, B)
    if t_rows.ndim != 2 or t_rows.shape[1] != B:
        raise ValueError(f"timesteps must be (K,) or (K, {B}), got {tuple(t_rows.shape)}")

    # Per-timestep tables, float64 on the host, cast once to the device.
    # Notation: c1 = posterior-mean coefficient of x0 (DDPM eq. 7); lv_q = log beta~_t
    # (clipped at t = 0); lv_p = the model's log-variance. For equal means up to
    # mu~(x0, x_t) - mu~(x0_hat, x_t) = c1 (x0 - x0_hat), the Gaussian KL per dimension is
    # 0.5 (kl_const + kl_scale (x0 - x0_hat)^2).
    host = schedule.tables("cpu", torch.float64)
    lv_q, lv_p = _log_variances(schedule, variance)
    kl_const = -1.0 + lv_p - lv_q + torch.exp(lv_q - lv_p)
    kl_scale = host.posterior_mean_coef1.pow(2) * torch.exp(-lv_p)
    table = torch.stack([kl_const, kl_scale]).to(device=device, dtype=acc)
    decoder_log_scale = 0.5 * float(lv_p[0])
    shape = (B, *([1] * (x0.ndim - 1)))

    # Prior L_T: KL(N(sqrt(ab_T) x0, 1 - ab_T) || N(0, 1)) per dimension.
    ab_T = float(host.alpha_bar[T - 1])
    prior = 0.5 * (-1.0 - math.log1p(-ab_T) + (1.0 - ab_T) + ab_T * x0.to(acc).pow(2))
    prior = prior.mean(dim=dims) / _LN2

    # Rows holding t = 0 need the decoder term (one host sync per call, none per step).
    if isinstance(timesteps, torch.Tensor):
        maybe_zero = (t_rows == 0).any(dim=1).tolist()
    else:
        maybe_zero = [int(t) == 0 for t in timesteps]
    terms = torch.empty(t_rows.shape[0], B, device=device, dtype=acc)
    for k in range(t_rows.shape[0]):
        t = t_rows[k]
        coef = table[:, t]  # (2, B)
        eps = torch.randn(x0.shape, generator=generator, device=device, dtype=dtype)
        x_t = q_sample(schedule, x0, t, eps)  # DDPM eq. 4
        _, x0_hat = denoiser.predict(x_t, t, cond)
        if clip_denoised:
            x0_hat = x0_hat.clamp(-1.0, 1.0)
        err2 = (x0 - x0_hat).to(acc).pow(2)
        term = (0.5 * (coef[0].view(shape) + coef[1].view(shape) * err2)).mean(dim=dims)
        if maybe_zero[k]:
            # L_0: the model mean mu~(x0_hat, x_1) is x0_hat itself (c1 = 1, c2 = 0 at t = 0).
            log_lik = discretized_gaussian_log_likelihood(x0, x0_hat, decoder_log_scale)
            term = torch.where(t == 0, -log_lik.to(acc).mean(dim=dims), term)
        terms[k] = term / _LN2
    return prior, terms


def nll_bpd(
    denoiser: Any,
    x0: torch.Tensor,
    *,
    steps: int | None = None,
    variance: str = "fixed_small",
    clip_denoised: bool = True,
    generator: torch.Generator | None = None,
    cond: torch.Tensor | None = None,
) -> torch.Tensor:
    """The bound in bits/dim of each image of a batch, ``(B,)`` on ``x0``'s device.

    ``steps`` None is the full bound; ``K`` the stratified estimator of the module
    docstring (``K`` network evaluations per image, unbiased).
    """
    strata = bound_strata(denoiser.schedule.num_timesteps, steps)
    if all(lo == hi for lo, hi in strata):
        rows: Sequence[int] | torch.Tensor = [lo for lo, _ in strata]
    else:
        rows = draw_timesteps(strata, x0.shape[0], generator=generator, device=x0.device)
    prior, terms = bound_terms_bpd(
        denoiser,
        x0,
        rows,
        variance=variance,
        clip_denoised=clip_denoised,
        generator=generator,
        cond=cond,
    )
    sizes = [float(hi - lo + 1) for lo, hi in strata]
    w = torch.tensor(sizes, device=terms.device, dtype=terms.dtype).view(-1, 1)
    return prior + (w * terms).sum(dim=0)


# --------------------------------------------------------------------------- the metric


class NLLMetric:
    """The ``nll`` metric: ``{"nll_bpd": mean bound over held-out images}``."""

    name = "nll"
    requires_model = True  # cannot score a sample file
    uses_samples = False  # a property of the model alone: compare runs it once per model

    def __init__(self, config: NLLConfig) -> None:
        self.config = config

    def __call__(self, context: MetricContext) -> dict[str, float]:
        cfg = self.config
        run = context.require_run(self.name)  # a one-line error for a sample file
        if getattr(run.recipe, "latent", None) is not None:
            raise DenoisekitError(LATENT_REFUSAL)
        denoiser = context.denoiser(self.name)
        images, labels = context.reference_images(cfg.num_images)
        if cfg.quantize:
            images = quantize(images)
        device = context.device
        generator = torch.Generator(device=device).manual_seed(context.seed)
        batch_size = cfg.batch_size or context.batch_size
        conditional = bool(run.num_classes)
        total = torch.zeros((), device=device, dtype=torch.float64)
        with eval_mode(denoiser.model):
            for start in range(0, images.shape[0], batch_size):
                x0 = images[start : start + batch_size].to(device)
                cond = None
                if conditional and labels is not None:
                    cond = labels[start : start + batch_size].to(device)
                bpd = nll_bpd(
                    denoiser,
                    x0,
                    steps=cfg.steps,
                    variance=cfg.variance,
                    clip_denoised=cfg.clip_denoised,
                    generator=generator,
                    cond=cond,
                )
                total += bpd.double().sum()
        return {"nll_bpd": float(total) / images.shape[0]}


#: Why ``nll`` does not score a latent run.
LATENT_REFUSAL = (
    "metric nll is not defined for latent runs ([latent]): its bound is on the latents, not "
    "the images' pixels; remove [metrics.nll] (fd and class-quality score decoded images)"
)


def check_nll(config: NLLConfig, context: CheckContext) -> Iterator[Problem]:
    """A latent run has no pixel likelihood bound."""
    if getattr(context.recipe, "latent", None) is not None:
        yield ("", LATENT_REFUSAL)


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    """Register ``nll``."""
    return [
        ComponentSpec(
            kind="metric",
            name="nll",
            config=NLLConfig,
            build=NLLMetric,
            check=check_nll,
            summary="negative log-likelihood (bits/dim) on held-out data from the variational "
            "bound (DDPM sec. 3.3, improved-diffusion's calc_bpd_loop).",
        )
    ]
