"""The ``nll`` metric: the variational bound in bits/dim against closed forms.

For Gaussian data x0 ~ N(m, s²) (iid per dimension) the exact denoiser is linear,
``E[x0 | x_t] = m + g_t (x_t - a_t m)`` with ``a_t = sqrt(alpha_bar_t)`` and
``g_t = a_t s² / (a_t² s² + 1 - a_t²)``, so for a fixed data set every expected term of the
bound is a closed form (the prior and the KL terms) or a one-dimensional Gaussian integral
(the decoder), computed here independently in float64 with numpy/scipy from the betas.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.polynomial.hermite_e import hermegauss
from scipy.stats import norm

from denoisekit.denoiser import Denoiser
from denoisekit.diffusion import DiscreteSchedule
from denoisekit.engine.evaluation import EvalContext
from denoisekit.images import quantize
from denoisekit.plugins.metrics.nll import (
    NLLConfig,
    NLLMetric,
    bound_strata,
    bound_terms_bpd,
    discretized_gaussian_log_likelihood,
    draw_timesteps,
    nll_bpd,
)

M, S = 0.1, 0.3  # data mean and standard deviation
SHAPE = (1, 4, 4)
BETAS = np.linspace(0.01, 0.2, 40)


class GaussianDenoiser(torch.nn.Module):
    """The exact x0 predictor E[x0 | x_t] of N(m, s²) data, optionally shrunk towards m."""

    def __init__(self, alpha_bar: np.ndarray, m: float, s: float, shrink: float = 1.0):
        super().__init__()
        self.register_buffer("alpha_bar", torch.as_tensor(alpha_bar, dtype=torch.float64))
        self.m, self.s, self.shrink = m, s, shrink

    def forward(self, x_t: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        ab = self.alpha_bar[time.round().long()].to(x_t.dtype).view(-1, 1, 1, 1)
        a = ab.sqrt()
        gain = a * self.s**2 / (ab * self.s**2 + 1 - ab)
        return self.m + self.shrink * gain * (x_t - a * self.m)


class ImageSet(torch.utils.data.Dataset):
    """Unlabelled images as a DataLike."""

    num_classes = None

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images
        self.image_shape = tuple(images.shape[1:])

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], -1


class StubRun:
    """What the metric reads from a run."""

    num_classes = None
    device = torch.device("cpu")
    recipe = registry = None

    def __init__(self, denoiser: Denoiser) -> None:
        self._denoiser = denoiser

    def sampling_denoiser(self) -> Denoiser:
        return self._denoiser


def gaussian_data(n: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = M + S * torch.randn((n, *SHAPE), generator=g, dtype=torch.float64)
    return quantize(x).to(dtype)


def make_denoiser(shrink: float = 1.0) -> Denoiser:
    schedule = DiscreteSchedule.from_betas(BETAS)
    model = GaussianDenoiser(schedule.alphas_cumprod.numpy(), M, S, shrink)
    return Denoiser(model, schedule, "x0")


def analytic_bound_bpd(x0: np.ndarray, betas: np.ndarray, *, variance: str) -> float:
    """E_eps[bound] for data set ``x0`` with the exact linear denoiser, float64, in bits/dim.

    Independent of the code under test: from the betas, with the Gaussian KL
    0.5 (log(v2/v1) + (v1 + (mu1 - mu2)²) / v2 - 1) and Gauss-Hermite quadrature.
    """
    x = x0.reshape(-1).astype(np.float64)
    T = len(betas)
    ab = np.cumprod(1 - betas)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    post_var = betas * (1 - ab_prev) / (1 - ab)
    a = np.sqrt(ab)
    gain = a * S**2 / (ab * S**2 + 1 - ab)
    # prior: KL(N(a_T x, 1 - ab_T) || N(0, 1))
    v1 = 1 - ab[-1]
    prior = 0.5 * (np.log(1 / v1) + (v1 + (a[-1] * x) ** 2) - 1)
    total = prior.mean()
    # KL terms, index t = 1 .. T-1: mean diff = c1 (x0 - x0_hat); x0 - x0_hat =
    # (1 - g a)(x0 - m) - g sqrt(1 - ab) eps, so E[diff²] = c1² ((1-ga)²(x0-m)² + g²(1-ab)).
    for t in range(1, T):
        c1 = np.sqrt(ab_prev[t]) * betas[t] / (1 - ab[t])
        v_q = post_var[t]
        v_p = post_var[t] if variance == "fixed_small" else betas[t]
        err2 = (1 - gain[t] * a[t]) ** 2 * (x - M) ** 2 + gain[t] ** 2 * (1 - ab[t])
        kl = 0.5 * (np.log(v_p / v_q) + (v_q + c1**2 * err2) / v_p - 1)
        total += kl.mean()
    total += analytic_decoder_nats(x, betas).mean()
    return total / math.log(2)


def analytic_decoder_nats(x: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """The decoder term -log p(x0 | x1) per value, in nats, expected over the noise.

    Its mean is x0_hat ~ N(mu0(x), (g sqrt(1 - ab))²) (Gauss–Hermite quadrature over it);
    its scale is sqrt(post_var[1]) (the clipped posterior variance, for both variances).
    """
    ab = np.cumprod(1 - betas)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    post_var = betas * (1 - ab_prev) / (1 - ab)
    a = np.sqrt(ab)
    gain = a * S**2 / (ab * S**2 + 1 - ab)
    sigma = np.sqrt(post_var[1])
    nodes, weights = hermegauss(80)
    weights = weights / weights.sum()
    mu0 = M * (1 - gain[0] * a[0]) + gain[0] * a[0] * x
    sd0 = gain[0] * np.sqrt(1 - ab[0])
    means = mu0[:, None] + sd0 * nodes[None, :]
    upper = norm.cdf((x[:, None] + 1 / 255 - means) / sigma)
    lower = norm.cdf((x[:, None] - 1 / 255 - means) / sigma)
    prob = np.where(
        x[:, None] < -0.999, upper, np.where(x[:, None] > 0.999, 1 - lower, upper - lower)
    )
    return -(np.log(np.maximum(prob, 1e-300)) * weights[None, :]).sum(axis=1)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_gaussian_data_exact_denoiser_matches_analytic_bound(variance: str) -> None:
    x0 = gaussian_data(1500)
    denoiser = make_denoiser()
    expected = analytic_bound_bpd(x0.numpy(), BETAS, variance=variance)
    per_image = nll_bpd(
        denoiser,
        x0,
        variance=variance,
        clip_denoised=False,
        generator=torch.Generator().manual_seed(1),
    )
    stderr = float(per_image.std()) / math.sqrt(len(per_image))
    assert abs(float(per_image.mean()) - expected) < 4 * stderr + 1e-4
    # The metric through an EvalContext (float32 images, batches) agrees too.
    metric = NLLMetric(NLLConfig(variance=variance, clip_denoised=False, num_images=None))
    context = EvalContext(
        run=StubRun(denoiser), reference=ImageSet(x0.float()), batch_size=500, seed=3
    )
    value = metric(context)["nll_bpd"]
    assert abs(value - expected) < 4 * stderr + 1e-3


def test_each_term_matches_its_closed_form() -> None:
    """Term by term: a KL term, the prior and the decoder against their float64 values."""
    x0 = gaussian_data(4000, seed=5)
    denoiser = make_denoiser()
    prior, terms = bound_terms_bpd(
        denoiser, x0, [25, 0], clip_denoised=False, generator=torch.Generator().manual_seed(2)
    )
    x = x0.numpy().reshape(-1)
    ab = np.cumprod(1 - BETAS)
    v1 = 1 - ab[-1]
    prior_expected = (0.5 * (np.log(1 / v1) + v1 + ab[-1] * x**2 - 1)).mean() / math.log(2)
    # the prior does not depend on the noise: exact per image
    assert float(prior.mean()) == pytest.approx(prior_expected, rel=1e-9)
    # the full-bound analytic value minus everything but t = 25 and the decoder
    t = 25
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    post_var = BETAS * (1 - ab_prev) / (1 - ab)
    a = np.sqrt(ab)
    gain = a * S**2 / (ab * S**2 + 1 - ab)
    c1 = np.sqrt(ab_prev[t]) * BETAS[t] / (1 - ab[t])
    err2 = (1 - gain[t] * a[t]) ** 2 * (x - M) ** 2 + gain[t] ** 2 * (1 - ab[t])
    kl_expected = (0.5 * (c1**2 * err2 / post_var[t])).mean() / math.log(2)  # equal variances
    se = float(terms[0].std()) / math.sqrt(terms.shape[1])
    assert abs(float(terms[0].mean()) - kl_expected) < 4 * se
    # the decoder (t = 0) against its quadrature over the denoiser's x0 estimate
    decoder_expected = analytic_decoder_nats(x, BETAS).mean() / math.log(2)
    se = float(terms[1].std()) / math.sqrt(terms.shape[1])
    assert abs(float(terms[1].mean()) - decoder_expected) < 4 * se


def test_better_model_has_lower_bound() -> None:
    x0 = gaussian_data(400, seed=7)
    results = []
    for shrink in (1.0, 0.8, 0.5):
        bpd = nll_bpd(
            make_denoiser(shrink),
            x0,
            clip_denoised=False,
            generator=torch.Generator().manual_seed(0),
        )
        results.append(float(bpd.mean()))
    assert results[0] < results[1] < results[2]


def test_bound_strata_full_and_subsampled() -> None:
    full = bound_strata(10, None)
    assert full == [(t, t) for t in range(9, -1, -1)]
    assert bound_strata(10, 10) == full
    strata = bound_strata(1000, 11)
    assert len(strata) == 11 and strata[-1] == (0, 0)
    covered = sorted(t for lo, hi in strata[:-1] for t in range(lo, hi + 1))
    assert covered == list(range(1, 1000))  # the ranges tile 1 .. T-1 exactly once
    sizes = [hi - lo + 1 for lo, hi in strata[:-1]]
    assert max(sizes) - min(sizes) <= 1
    rows = draw_timesteps(strata, 500, generator=torch.Generator().manual_seed(0))
    for (lo, hi), row in zip(strata, rows, strict=True):
        assert int(row.min()) >= lo and int(row.max()) <= hi
    assert len(set(rows[0].tolist())) > 50  # drawn per image
    with pytest.raises(ValueError, match="'steps' must be >= 2"):
        bound_strata(10, 1)


def cosine_betas(T: int, s: float = 0.008) -> np.ndarray:
    """Nichol & Dhariwal's cosine schedule (eq. 17), betas clipped at 0.999."""
    f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * np.pi / 2) ** 2
    ab = f[1:] / f[0]
    return np.minimum(1 - ab / np.concatenate([[1.0], ab[:-1]]), 0.999)


def test_subsampled_estimate_is_unbiased_for_the_full_bound() -> None:
    """Stratified timesteps on a 1000-step cosine schedule: the mean over many images is
    the analytic full bound, though the terms are steep near t = 1."""
    betas = cosine_betas(1000)
    schedule = DiscreteSchedule.from_betas(betas)
    denoiser = Denoiser(GaussianDenoiser(schedule.alphas_cumprod.numpy(), M, S), schedule, "x0")
    x0 = gaussian_data(2000, seed=11)
    full = analytic_bound_bpd(x0.numpy(), betas, variance="fixed_small")
    sub = nll_bpd(
        denoiser, x0, steps=20, clip_denoised=False, generator=torch.Generator().manual_seed(0)
    )
    stderr = float(sub.std()) / math.sqrt(len(sub))
    assert abs(float(sub.mean()) - full) < 4 * stderr
    assert stderr < 0.05 * full  # and informative


def test_discretized_likelihood_is_a_distribution_on_the_8bit_grid() -> None:
    grid = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean, log_scale in [(0.0, math.log(0.1)), (0.7, math.log(0.01)), (-1.2, math.log(0.5))]:
        logp = discretized_gaussian_log_likelihood(grid, torch.full_like(grid, mean), log_scale)
        assert float(logp.exp().sum()) == pytest.approx(1.0, abs=1e-9)
        # an interior bin near the mean: Phi((x + 1/255 - mu)/s) - Phi((x - 1/255 - mu)/s)
        sigma = math.exp(log_scale)
        i = min(max(round((mean + 1) * 127.5), 1), 254)
        x = float(grid[i])
        expected = norm.cdf((x + 1 / 255 - mean) / sigma) - norm.cdf((x - 1 / 255 - mean) / sigma)
        assert float(logp[i].exp()) == pytest.approx(expected, rel=1e-9)
        # the edge bins reach to -inf / +inf
        assert float(logp[0].exp()) == pytest.approx(norm.cdf((-1 + 1 / 255 - mean) / sigma))
        assert float(logp[255].exp()) == pytest.approx(norm.sf((1 - 1 / 255 - mean) / sigma))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="'steps' must be an integer >= 2"):
        NLLConfig(steps=1)
    with pytest.raises(ValueError, match="'num_images' must be a positive integer"):
        NLLConfig(num_images=0)
    with pytest.raises(ValueError, match="variance"):
        NLLConfig(variance="learned")
