"""Inpainting through the denoiser (engine/inpainting.py) against closed forms.

Gaussian data ``x0 ~ N(mu, S)`` has a closed-form optimal denoiser,
``E[x0 | x_t] = mu + a S (a^2 S + s^2 I)^-1 (x_t - a mu)`` (``a = sqrt(ab_t)``,
``s^2 = 1 - ab_t``), and a closed-form answer to inpainting: the Gaussian conditional of
the unknown coordinates given the known ones. So each method's update is checked against
its paper's formula, and its samples' mean and covariance against the exact conditional.
"""

from __future__ import annotations

import pytest
import torch

from denoisekit.denoiser import Denoiser
from denoisekit.engine.editing import EditOptions, edit_batch
from denoisekit.engine.inpainting import (
    METHODS,
    GradientDenoiser,
    PosteriorDenoiser,
    ProjectionDenoiser,
    inpainting_denoiser,
)
from denoisekit.plugins.samplers.ddim import DDIMConfig, DDIMSampler
from denoisekit.plugins.samplers.ddpm import DDPMConfig, DDPMSampler
from denoisekit.plugins.samplers.dpmpp_2m import DPMSolverConfig, DPMSolverSampler
from denoisekit.testing.conformance import ToyBackbone, single_thread, toy_schedule

D = 6
KNOWN = [0, 2, 4]  # coordinates kept; the others are regenerated
UNKNOWN = [1, 3, 5]
Y = torch.tensor([0.5, 0.4, 0.6], dtype=torch.float64)


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


def gaussian():
    """Strongly correlated neighbours: the known coordinates say a lot about the others."""
    i = torch.arange(D, dtype=torch.float64)
    cov = 0.09 * 0.8 ** (i[:, None] - i[None, :]).abs() + 0.002 * torch.eye(D, dtype=torch.float64)
    mu = torch.linspace(-0.2, 0.2, D, dtype=torch.float64)
    return mu, cov


class GaussianBackbone(torch.nn.Module):
    """The exact eps-predictor of ``N(mu, cov)`` data (images ``(B, 1, 1, D)``)."""

    time_input = "timestep"

    def __init__(self, mu, cov, schedule):
        super().__init__()
        self.mu, self.ab = mu, schedule.alphas_cumprod
        self.lam, self.vec = torch.linalg.eigh(cov)

    def gain(self, t: int) -> torch.Tensor:
        """``dE[x0 | x_t] / dx_t`` (symmetric)."""
        ab = self.ab[t]
        return self.vec @ torch.diag(ab.sqrt() * self.lam / (ab * self.lam + 1 - ab)) @ self.vec.T

    def mean(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        a = self.ab[t].sqrt()
        return self.mu + (x_t - a * self.mu) @ self.gain(t)

    def forward(self, x, time):
        t = int(time[0])
        assert bool((time == t).all())
        flat = x.reshape(x.shape[0], D)
        a, s = self.ab[t].sqrt(), (1 - self.ab[t]).sqrt()
        return ((flat - a * self.mean(flat, t)) / s).reshape(x.shape)


def problem(n: int, schedule):
    mu, cov = gaussian()
    known = torch.zeros(n, 1, 1, D, dtype=torch.float64)
    known[..., KNOWN] = Y
    mask = torch.ones(1, 1, 1, D, dtype=torch.float64)
    mask[..., KNOWN] = 0
    return GaussianBackbone(mu, cov, schedule), known, mask


def exact_conditional():
    mu, cov = gaussian()
    cross = cov[UNKNOWN][:, KNOWN]
    solve = torch.linalg.solve(cov[KNOWN][:, KNOWN], torch.eye(len(KNOWN), dtype=torch.float64))
    mean = mu[UNKNOWN] + cross @ solve @ (Y - mu[KNOWN])
    return mean, cov[UNKNOWN][:, UNKNOWN] - cross @ solve @ cross.T


@pytest.mark.parametrize("t", [5, 40, 90])
def test_mmps_estimate_is_the_exact_conditional_mean_given_x_t_and_the_known_pixels(t):
    sched = toy_schedule(100)
    model, known, mask = problem(4, sched)
    x_t = torch.randn(4, 1, 1, D, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
    den = PosteriorDenoiser(Denoiser(model, sched), known, mask, iterations=len(KNOWN))
    eps, x0 = den.predict(x_t, t)
    # x0 | x_t ~ N(m, C), C = (S^-1 + ab / (1 - ab) I)^-1; then condition on x0[K] = y.
    _, cov = gaussian()
    ab = sched.alphas_cumprod[t]
    post = torch.linalg.inv(
        torch.linalg.inv(cov) + ab / (1 - ab) * torch.eye(D, dtype=torch.float64)
    )
    m = model.mean(x_t.reshape(4, D), t)
    expected = m[:, UNKNOWN] + (Y - m[:, KNOWN]) @ torch.linalg.solve(
        post[KNOWN][:, KNOWN], post[KNOWN][:, UNKNOWN]
    )
    got = x0.reshape(4, D)
    torch.testing.assert_close(got[:, UNKNOWN], expected, rtol=0, atol=1e-9)
    assert torch.equal(got[:, KNOWN], Y.expand(4, -1))
    # eps is the one of x0: x_t = a x0 + s eps
    torch.testing.assert_close(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, x_t, rtol=0, atol=1e-12)
    assert den.num_backward == len(KNOWN) + 1 and den.num_evaluations == 1


def test_pigdm_estimate_is_the_papers_guidance_through_tweedie():
    """Π-GDM eq. 7 (noiseless, A = keep, r_t^2 = 1 - ab_t): the likelihood score
    ``J^T A^T (y - A m) / r_t^2`` added to the score, read as an x0 by Tweedie's formula."""
    sched = toy_schedule(100)
    model, known, mask = problem(3, sched)
    t = 30
    x_t = torch.randn(3, 1, 1, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _, x0 = PosteriorDenoiser(Denoiser(model, sched), known, mask).predict(x_t, t)
    ab = sched.alphas_cumprod[t]
    m = model.mean(x_t.reshape(3, D), t)
    residual = torch.zeros(3, D, dtype=torch.float64)
    residual[:, KNOWN] = Y - m[:, KNOWN]
    score = residual @ model.gain(t) / (1 - ab)  # gain is symmetric: J^T = J
    expected = m + (1 - ab) / ab.sqrt() * score
    got = x0.reshape(3, D)
    torch.testing.assert_close(got[:, UNKNOWN], expected[:, UNKNOWN], rtol=0, atol=1e-12)
    assert torch.equal(got[:, KNOWN], Y.expand(3, -1))


def test_ddnm_with_ddim_eta_1_is_the_papers_algorithm_1():
    """Wang et al. 2023, Algorithm 1 with A = keep: x0|t from eps, the range–null-space
    correction, then x_{t-1} ~ p(x_{t-1} | x_t, x0^) (the DDPM posterior), on every timestep."""
    sched = toy_schedule(40)
    model, known, mask = problem(5, sched)
    x_T = torch.randn(5, 1, 1, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sampler = DDIMSampler(DDIMConfig(steps=40, eta=1.0, clip_denoised=False))
    den = ProjectionDenoiser(Denoiser(model, sched), known, mask, x_T)
    out = sampler.sample(den, x_T, generator=torch.Generator().manual_seed(9))

    g, ab, x = torch.Generator().manual_seed(9), sched.alphas_cumprod, x_T
    for t in range(39, -1, -1):
        a_t, a_s = ab[t], ab[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64)
        e = model(x, torch.full((5,), float(t), dtype=torch.float64))
        x0 = (x - (1 - a_t).sqrt() * e) / a_t.sqrt()
        x0 = known * (1 - mask) + mask * x0  # A^+ y + (I - A^+ A) x0|t
        beta = 1 - a_t / a_s
        mean = (a_s.sqrt() * beta * x0 + (a_t / a_s).sqrt() * (1 - a_s) * x) / (1 - a_t)
        x = mean
        if t > 0:
            x = x + (beta * (1 - a_s) / (1 - a_t)).sqrt() * torch.randn(
                x.shape, generator=g, dtype=x.dtype
            )
    torch.testing.assert_close(out, x.clamp(-1, 1), rtol=0, atol=1e-10)


@pytest.mark.parametrize("zeta", [1.0, 0.3])
def test_dps_with_ddim_eta_1_is_the_papers_algorithm_1(zeta):
    """Chung et al. 2023, Algorithm 1 with A = keep and their step
    ``zeta_i = zeta' / ||y - A x0^||``: a DDPM step from x0^, then
    ``x_{i-1} -= zeta_i grad_{x_i} ||y - A x0^(x_i)||^2``, the gradient here from the
    closed-form Jacobian of the Gaussian denoiser (``dx0^/dx_t = gain``, symmetric)."""
    sched = toy_schedule(40)
    model, known, mask = problem(5, sched)
    x_T = torch.randn(5, 1, 1, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sampler = DDIMSampler(DDIMConfig(steps=40, eta=1.0, clip_denoised=False))
    den = GradientDenoiser(Denoiser(model, sched), known, mask, x_T, step=zeta)
    out = sampler.sample(den, x_T, generator=torch.Generator().manual_seed(9))
    assert den.num_backward == 40 and den.num_evaluations == 40

    g, ab, x = torch.Generator().manual_seed(9), sched.alphas_cumprod, x_T
    keep = (1 - mask).reshape(D)
    for t in range(39, -1, -1):
        a_t, a_s = ab[t], ab[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64)
        e = model(x, torch.full((5,), float(t), dtype=torch.float64))
        x0 = (x - (1 - a_t).sqrt() * e) / a_t.sqrt()
        r = keep * (known - x0).reshape(5, D)
        grad = (-2.0 * r @ model.gain(t)).reshape(x.shape)  # of ||y - A x0^||^2 over x_t
        zeta_i = zeta / r.norm(dim=1).reshape(5, 1, 1, 1)
        beta = 1 - a_t / a_s
        mean = (a_s.sqrt() * beta * x0 + (a_t / a_s).sqrt() * (1 - a_s) * x) / (1 - a_t)
        x = mean
        if t > 0:
            x = x + (beta * (1 - a_s) / (1 - a_t)).sqrt() * torch.randn(
                x.shape, generator=g, dtype=x.dtype
            )
        x = x - zeta_i * grad
    torch.testing.assert_close(out, x.clamp(-1, 1), rtol=0, atol=1e-10)


SAMPLERS = {
    # the full DDPM chain (a shorter stochastic chain's own error is ~8% on the variances
    # at 250 steps: fixed-small posterior variances)
    "ddim-eta1-1000": DDIMSampler(DDIMConfig(steps=1000, eta=1.0, clip_denoised=False)),
    "dpmpp-2m-20": DPMSolverSampler(DPMSolverConfig(steps=20, clip_denoised=False)),
}


@pytest.mark.parametrize(
    "name", [pytest.param("ddim-eta1-1000", marks=pytest.mark.slow), "dpmpp-2m-20"]
)
def test_mmps_samples_have_the_exact_conditional_mean_and_covariance(name):
    """4,000 samples: standard errors about 0.0025 on the means and 0.0006 on the variances.
    Replacement and DDNM are far off (their x0 estimate conditions on the noisy known
    pixels of x_t, not on the known pixels), which is why neither is the default."""
    sched, n = toy_schedule(1000), 4000
    model, known, mask = problem(n, sched)
    mean, cov = exact_conditional()
    x_T = torch.randn(n, 1, 1, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    moments = {}
    for method in ("mmps", "replacement", "ddnm"):
        den = inpainting_denoiser(
            method, Denoiser(model, sched), known, mask, x_T, iterations=len(KNOWN)
        )
        out = SAMPLERS[name].sample(den, x_T, generator=torch.Generator().manual_seed(1))
        unknown = out.reshape(n, D)[:, UNKNOWN]
        moments[method] = (unknown.mean(0), torch.cov(unknown.T))
    got_mean, got_cov = moments["mmps"]
    assert float((got_mean - mean).abs().max()) < 0.01, (got_mean, mean)
    assert float((got_cov - cov).abs().max()) < 0.1 * float(cov.diag().min()), (got_cov, cov)
    for method in ("replacement", "ddnm"):
        m, c = moments[method]
        assert float((m - mean).abs().max()) > 0.1, (method, m, mean)
        assert float((c.diag() / cov.diag()).min()) > 1.3, (method, c, cov)


def test_dps_samples_approach_the_exact_conditional_only_as_far_as_its_approximation():
    """The paper's setting: the full DDPM chain (DDIM eta 1 on 1,000 timesteps), zeta' = 1.
    DPS is not exact: it takes ``p(y | x_t)`` as a Gaussian around the network's ``x0``
    with no ``Cov[x0 | x_t]`` and scales its gradient by ``1 / ||y - A x0||``, a step size
    rather than a likelihood weight, so its samples need not match the conditional
    moments at any step count. Measured here (2,000 samples, standard errors 0.0034 on a
    mean and about 3% on a variance): the largest error of a mean 0.053, against 0.13 for
    replacement and 0.01 for MMPS; variances 0.81-1.26 times the exact ones (replacement
    1.5-1.8). The test holds DPS to that (0.08, 0.7-1.4) and to beating replacement."""
    sched, n = toy_schedule(1000), 2000
    model, known, mask = problem(n, sched)
    mean, cov = exact_conditional()
    x_T = torch.randn(n, 1, 1, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sampler = DDIMSampler(DDIMConfig(steps=1000, eta=1.0, clip_denoised=False))
    errors = {}
    for method in ("dps", "replacement"):
        den = inpainting_denoiser(method, Denoiser(model, sched), known, mask, x_T)
        out = sampler.sample(den, x_T, generator=torch.Generator().manual_seed(1))
        unknown = out.reshape(n, D)[:, UNKNOWN]
        ratio = torch.cov(unknown.T).diag() / cov.diag()
        errors[method] = float((unknown.mean(0) - mean).abs().max()), ratio
    error, ratio = errors["dps"]
    assert error < 0.08 and float(ratio.min()) > 0.7 and float(ratio.max()) < 1.4, errors
    assert errors["replacement"][0] > 0.1 and error < errors["replacement"][0] / 2, errors


# --------------------------------------------------------------------------- every method


def samplers():
    return {
        "ddim": DDIMSampler(DDIMConfig(steps=10, eta=1.0)),
        "ddpm": DDPMSampler(DDPMConfig(steps=10)),
        "dpmpp-2m": DPMSolverSampler(DPMSolverConfig(steps=10)),
    }


def edit(method, sampler, images, mask, x_T, repaint=None):
    den = Denoiser(ToyBackbone(images.shape[1]), toy_schedule(50))
    options = EditOptions(method=method, iterations=2, repaint=repaint)
    return edit_batch(
        den,
        sampler,
        images,
        x_T,
        mask=mask,
        options=options,
        generator=torch.Generator().manual_seed(0),
    )


def inputs():
    g = torch.Generator().manual_seed(4)
    images = torch.rand(3, 2, 4, 4, generator=g) * 2 - 1
    return images, torch.randn(3, 2, 4, 4, generator=g)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp-2m", "repaint"])
def test_known_pixels_are_exact_and_the_masks_extremes(method, sampler):
    images, x_T = inputs()
    run = samplers().get(sampler)
    repaint = (10, 2, 3) if sampler == "repaint" else None
    mask = (torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(2)) < 0.5).float()
    out = edit(method, run, images, mask, x_T, repaint)
    keep = (mask == 0).expand_as(images)
    assert torch.equal(out[keep], images[keep])
    assert float((out - images)[~keep].abs().max()) > 1e-2

    everything = edit(method, run, images, torch.zeros(1, 1, 4, 4), x_T, repaint)
    assert torch.equal(everything, images)
    if sampler != "repaint":  # (RePaint is not a plain sampler)
        nothing = edit(method, run, images, torch.ones(1, 1, 4, 4), x_T)
        den = Denoiser(ToyBackbone(2), toy_schedule(50))
        plain = run.sample(den, x_T, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(nothing, plain, rtol=0, atol=1e-6)


def test_methods_and_iterations_are_checked():
    from denoisekit.errors import DataError

    with pytest.raises(DataError, match="--inpaint nope: unknown method"):
        EditOptions(method="nope")
    with pytest.raises(DataError, match="--cg-iterations 0"):
        EditOptions(method="mmps", iterations=0)
    with pytest.raises(ValueError, match="unknown inpainting method"):
        inpainting_denoiser("nope", None, torch.zeros(1), torch.zeros(1), torch.zeros(1))
