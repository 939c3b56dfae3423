"""denoisekit.diffusion against closed forms derived here, in float64 numpy/math."""

from __future__ import annotations

import itertools
import math
import pickle

import numpy as np
import pytest
import torch

from denoisekit import diffusion as D
from denoisekit.diffusion import DiscreteSchedule

# --------------------------------------------------------------------------- helpers


def cosine_alpha_bar(T: int, s: float = 0.008) -> np.ndarray:
    """alpha_bar(t) = f(t) / f(0) at t = 1..T (no clipping: fine away from t = T)."""
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return np.array([f(t) / f(0) for t in range(1, T + 1)])


def linear_ab(T: int) -> torch.Tensor:
    """alpha_bar of DDPM's linear betas (1e-4 .. 0.02) over T steps."""
    return DiscreteSchedule.from_betas(torch.linspace(1e-4, 0.02, T)).alphas_cumprod


@pytest.fixture
def sched() -> DiscreteSchedule:
    # A 50-step cosine alpha_bar (the last value kept away from 0 by dropping t = T).
    return DiscreteSchedule(cosine_alpha_bar(51)[:50])


# --------------------------------------------------------------------------- schedule object


def test_schedule_derived_quantities_match_definitions(sched):
    ab = sched.alphas_cumprod.numpy()
    assert sched.num_timesteps == 50
    assert sched.alphas_cumprod.dtype == torch.float64
    prev = np.concatenate([[1.0], ab[:-1]])
    np.testing.assert_allclose(sched.alphas_cumprod_prev.numpy(), prev, rtol=0, atol=0)
    np.testing.assert_allclose(sched.alphas.numpy(), ab / prev, rtol=1e-15)
    np.testing.assert_allclose(sched.betas.numpy(), 1 - ab / prev, rtol=1e-12)
    np.testing.assert_allclose(np.cumprod(1 - sched.betas.numpy()), ab, rtol=1e-12)
    np.testing.assert_allclose(sched.snr.numpy(), ab / (1 - ab), rtol=1e-12)
    np.testing.assert_allclose(sched.log_snr.numpy(), np.log(ab / (1 - ab)), rtol=1e-12)


def test_from_betas_is_cumulative_product():
    betas = [0.1, 0.2, 0.3, 0.5]
    s = DiscreteSchedule.from_betas(betas)
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), [0.9, 0.72, 0.504, 0.252], rtol=1e-14)
    np.testing.assert_allclose(s.betas.numpy(), betas, rtol=1e-13)


def test_alphas_cumprod_is_a_copy(sched):
    sched.alphas_cumprod.zero_()
    assert float(sched.alphas_cumprod[0]) > 0.99


@pytest.mark.parametrize(
    "bad, match",
    [
        ([0.9, 0.9], "strictly decreasing"),
        ([0.5, 0.6], "strictly decreasing"),
        ([1.0, 0.5], r"\(0, 1\)"),
        ([0.5, 0.0], r"\(0, 1\)"),
        ([0.5, -0.1], r"\(0, 1\)"),
        ([0.5, float("nan")], "finite"),
        ([], "non-empty"),
        ([[0.9, 0.8]], "1-D"),
    ],
)
def test_schedule_rejects_invalid_alpha_bar(bad, match):
    with pytest.raises(ValueError, match=match):
        DiscreteSchedule(torch.tensor(bad, dtype=torch.float64))


@pytest.mark.parametrize("betas", [[0.1, 1.0], [0.0, 0.1], [-0.1], []])
def test_from_betas_rejects_invalid_betas(betas):
    with pytest.raises(ValueError):
        DiscreteSchedule.from_betas(torch.tensor(betas, dtype=torch.float64))


def test_tables_cached_per_device_and_dtype(sched):
    a = sched.tables("cpu", torch.float32)
    assert sched.tables(torch.device("cpu"), torch.float32) is a
    b = sched.tables("cpu", torch.float64)
    assert b is not a
    assert a.sqrt_alpha_bar.dtype == torch.float32 and b.sqrt_alpha_bar.dtype == torch.float64
    with pytest.raises(TypeError):
        sched.tables("cpu", torch.int64)


def test_tables_values(sched):
    tab = sched.tables("cpu", torch.float64)
    ab = sched.alphas_cumprod.numpy()
    prev = np.concatenate([[1.0], ab[:-1]])
    beta = 1 - ab / prev
    post_var = beta * (1 - prev) / (1 - ab)
    np.testing.assert_allclose(tab.sqrt_alpha_bar.numpy(), np.sqrt(ab), rtol=1e-14)
    np.testing.assert_allclose(tab.sqrt_one_minus_alpha_bar.numpy(), np.sqrt(1 - ab), rtol=1e-14)
    np.testing.assert_allclose(tab.sqrt_recip_alpha_bar.numpy(), 1 / np.sqrt(ab), rtol=1e-14)
    np.testing.assert_allclose(tab.sqrt_recipm1_alpha_bar.numpy(), np.sqrt(1 / ab - 1), rtol=1e-12)
    np.testing.assert_allclose(tab.posterior_variance.numpy(), post_var, rtol=1e-12, atol=0)
    assert float(tab.posterior_variance[0]) == 0.0
    # log-variance clipped at t = 0 to the value at t = 1 (improved-diffusion).
    np.testing.assert_allclose(
        tab.posterior_log_variance_clipped.numpy(),
        np.log(np.concatenate([[post_var[1]], post_var[1:]])),
        rtol=1e-12,
    )
    np.testing.assert_allclose(tab.log_snr.numpy(), np.log(ab) - np.log1p(-ab), rtol=1e-12)


def test_pickle_drops_device_cache(sched):
    sched.tables("cpu", torch.float32)
    clone = pickle.loads(pickle.dumps(sched))
    assert clone == sched
    assert clone._tables == {}


# --------------------------------------------------------------------------- respacing


def test_respace_keeps_alpha_bar_and_recomputes_betas(sched):
    use = [49, 0, 10, 30, 31]
    new, tmap = sched.respace(use)
    assert tmap.dtype == torch.long and tmap.tolist() == [0, 10, 30, 31, 49]
    ab = sched.alphas_cumprod.numpy()
    np.testing.assert_array_equal(new.alphas_cumprod.numpy(), ab[[0, 10, 30, 31, 49]])
    # Improved DDPM section 4: beta_i = 1 - alpha_bar_{t_i} / alpha_bar_{t_{i-1}}.
    kept = ab[[0, 10, 30, 31, 49]]
    expected = 1 - kept / np.concatenate([[1.0], kept[:-1]])
    np.testing.assert_allclose(new.betas.numpy(), expected, rtol=1e-12)


def test_respace_full_is_identity(sched):
    new, tmap = sched.respace(range(50))
    assert new == sched and tmap.tolist() == list(range(50))


@pytest.mark.parametrize("use", [[], [1, 1], [50], [-1]])
def test_respace_rejects_bad_timesteps(sched, use):
    with pytest.raises(ValueError):
        sched.respace(use)


# --------------------------------------------------------------------------- spacings


@pytest.mark.parametrize(
    "spacing, expected",
    [
        # Lin et al. 2023 ("Common Diffusion Noise Schedules and Sample Steps are Flawed"),
        # table 2: T = 1000, 10 sampling steps.
        ("linspace", [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
        ("leading", [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]),
        ("trailing", [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
    ],
)
def test_spacings_match_published_table(spacing, expected):
    assert D.spaced_timesteps(linear_ab(1000), 10, spacing) == expected


@pytest.mark.parametrize(
    "spacing, expected",
    [
        ("linspace", [999, 500, 0]),  # round(499.5) = 500 (half to even)
        ("leading", [666, 333, 0]),  # 1000 // 3 = 333
        ("trailing", [999, 666, 332]),  # round(1000, 666.67, 333.33) - 1
    ],
)
def test_spacings_non_divisible(spacing, expected):
    assert D.spaced_timesteps(linear_ab(1000), 3, spacing) == expected


@pytest.mark.parametrize("spacing", D.SPACINGS)
@pytest.mark.parametrize("T", [1, 7, 100])
def test_spacings_full_chain_and_bounds(spacing, T):
    assert D.spaced_timesteps(linear_ab(T), T, spacing) == list(range(T - 1, -1, -1))
    for n in range(1, T + 1):
        ts = D.spaced_timesteps(linear_ab(T), n, spacing)
        assert len(ts) == n and ts == sorted(set(ts), reverse=True)
        assert ts[-1] >= 0 and ts[0] <= T - 1


def test_spacing_errors():
    with pytest.raises(ValueError, match="exceeds"):
        D.spaced_timesteps(linear_ab(10), 11)
    with pytest.raises(ValueError, match="> 0"):
        D.spaced_timesteps(linear_ab(10), 0)
    with pytest.raises(ValueError, match="unknown spacing"):
        D.spaced_timesteps(linear_ab(10), 5, "uniform")


def test_spaced_timesteps_from_num_timesteps_is_deprecated_but_works():
    with pytest.warns(DeprecationWarning, match="alphas_cumprod"):
        assert D.spaced_timesteps(1000, 10, "leading") == list(range(900, -1, -100))
    with pytest.raises(ValueError, match="needs the schedule"), pytest.warns(DeprecationWarning):
        D.spaced_timesteps(1000, 10, "karras")


def _karras_levels(ab: np.ndarray, n: int, rho: float) -> np.ndarray:
    """EDM eq. 5 between the schedule's sigma_max (t = T - 1) and sigma_min (t = 0)."""
    sigma = np.sqrt((1 - ab) / ab)
    ramp = np.arange(n) / (n - 1)
    hi, lo = sigma[-1] ** (1 / rho), sigma[0] ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def _alpha_bar_at(ab: np.ndarray, t: float) -> float:
    """alpha_bar at fractional t: the log-SNR linear between the neighbouring steps."""
    ls = np.log(ab / (1 - ab))
    lo = min(int(t), len(ab) - 1)
    lam = ls[lo] + (t - lo) * (ls[min(lo + 1, len(ab) - 1)] - ls[lo])
    return 1 / (1 + math.exp(-lam))


@pytest.mark.parametrize("n, rho", [(2, 7.0), (10, 7.0), (18, 3.0)])
def test_karras_spacing_places_eq_5_levels_at_fractional_timesteps(n, rho):
    ab = linear_ab(1000).numpy()
    ts = D.spaced_timesteps(ab, n, "karras", continuous=True, rho=rho)
    assert ts[0] == 999 and ts[-1] == 0 and all(a > b for a, b in itertools.pairwise(ts))
    got = [math.sqrt((1 - a) / a) for a in (_alpha_bar_at(ab, t) for t in ts)]
    np.testing.assert_allclose(got, _karras_levels(ab, n, rho), rtol=1e-9)
    # Snapped: the nearest step in log-SNR of each level (no collisions at these sizes).
    log_sigma = 0.5 * np.log((1 - ab) / ab)
    nearest = [int(np.abs(log_sigma - math.log(s)).argmin()) for s in _karras_levels(ab, n, rho)]
    assert D.spaced_timesteps(ab, n, "karras", rho=rho) == nearest


def test_logsnr_spacing_is_uniform_in_log_snr_from_lambda_min():
    ab = linear_ab(1000).numpy()
    ts = D.spaced_timesteps(ab, 8, "logsnr", continuous=True, lambda_min=-4.0)
    lam = [0.5 * math.log(a / (1 - a)) for a in (_alpha_bar_at(ab, t) for t in ts)]
    assert ts[0] == 999  # where x_T is; the grid itself starts at lambda_min
    np.testing.assert_allclose(lam[1:], np.linspace(-4.0, lam[-1], 8)[1:], rtol=1e-9)
    assert lam[-1] == pytest.approx(0.5 * math.log(ab[0] / (1 - ab[0])), rel=1e-12)


@pytest.mark.parametrize("spacing", ["logsnr", "karras"])
def test_level_spacings_snap_to_distinct_steps_when_crowded(spacing):
    ab = linear_ab(30)
    for n in (2, 10, 29, 30):
        ts = D.spaced_timesteps(ab, n, spacing)
        assert len(ts) == n and ts == sorted(set(ts), reverse=True)
        assert ts[0] == 29 and ts[-1] >= 0 and all(isinstance(t, int) for t in ts)


def test_sampling_steps_at_fractional_timesteps():
    sched = D.DiscreteSchedule.from_betas(torch.linspace(1e-4, 0.02, 100))
    ab = sched.alphas_cumprod.numpy()
    steps = D.sampling_steps(sched, [99, 50.5, 10.25, 0], torch.zeros(3, 2))
    assert steps.timesteps == [99, 50.5, 10.25, 0]
    assert steps.t.dtype == torch.float64 and steps.t.shape == (4, 3)
    expected = [_alpha_bar_at(ab, t) for t in (99, 50.5, 10.25, 0)]
    np.testing.assert_allclose(steps.alpha_bar, expected, rtol=1e-12)
    assert steps.alpha_bar[0] == ab[99] and steps.alpha_bar[-1] == ab[0]  # exact at steps
    assert D.sampling_steps(sched, [99.0, 0.0], torch.zeros(1)).t.dtype == torch.long


def test_q_sample_at_fractional_timesteps():
    sched = D.DiscreteSchedule.from_betas(torch.linspace(1e-4, 0.02, 100))
    ab = sched.alphas_cumprod.numpy()
    x0, eps = torch.tensor([0.5, -0.25], dtype=torch.float64), torch.tensor([1.0, 2.0])
    t = torch.tensor([3.5, 70.0], dtype=torch.float64)
    a = torch.tensor([_alpha_bar_at(ab, 3.5), ab[70]], dtype=torch.float64)
    expected = a.sqrt() * x0 + (1 - a).sqrt() * eps.double()
    torch.testing.assert_close(D.q_sample(sched, x0, t, eps.double()), expected, rtol=1e-12, atol=0)
    integer = D.q_sample(sched, x0, torch.tensor([3, 70]), eps.double())
    assert D.q_sample(sched, x0, t, eps.double())[1] == integer[1]  # bit-equal at a step
    with pytest.raises(TypeError, match="integer"):
        D.q_posterior(sched, x0, x0, t)


# --------------------------------------------------------------------------- forward process


def _batch(T: int, shape: tuple[int, ...], dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T)
    x0 = torch.rand((T, *shape), generator=g, dtype=dtype) * 2 - 1
    eps = torch.randn((T, *shape), generator=g, dtype=dtype)
    return t, x0, eps


@pytest.mark.parametrize("shape", [(), (3,), (2, 3, 4)])
def test_q_sample_is_the_closed_form(sched, shape):
    t, x0, eps = _batch(50, shape)
    ab = torch.from_numpy(cosine_alpha_bar(51)[:50]).view(-1, *[1] * len(shape))
    expected = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    torch.testing.assert_close(D.q_sample(sched, x0, t, eps), expected, rtol=1e-14, atol=1e-14)


def test_q_sample_moments_empirically(sched):
    # N draws of x_t for fixed x0 and t: mean sqrt(ab) x0, variance 1 - ab. Tolerances are
    # 5 standard errors: sd(mean) = sqrt((1-ab)/N), sd(var) = (1-ab) sqrt(2/(N-1)).
    N = 100_000
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0, 10, 25, 49])
    x0 = torch.tensor([0.7, -0.3, 0.5, 1.0], dtype=torch.float64)
    noise = torch.randn(N, 4, generator=g, dtype=torch.float64)
    x_t = D.q_sample(sched, x0.expand(N, 4).T, t, noise.T)  # (4, N): batch = timesteps
    ab = torch.from_numpy(cosine_alpha_bar(51)[:50])[t]
    mean, var = x_t.mean(1), x_t.var(1)
    assert torch.all((mean - ab.sqrt() * x0).abs() < 5 * ((1 - ab) / N).sqrt())
    assert torch.all((var - (1 - ab)).abs() < 5 * (1 - ab) * math.sqrt(2 / (N - 1)))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 2e-3)])
@pytest.mark.parametrize("shape", [(3,), (2, 3, 4)])
def test_parameterization_round_trips(sched, dtype, tol, shape):
    t, x0, eps = _batch(50, shape, dtype)
    a = torch.from_numpy(cosine_alpha_bar(51)[:50]).to(dtype).view(-1, *[1] * len(shape))
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    torch.testing.assert_close(D.predict_x0_from_eps(sched, x_t, t, eps), x0, rtol=tol, atol=tol)
    torch.testing.assert_close(D.predict_eps_from_x0(sched, x_t, t, x0), eps, rtol=tol, atol=tol)
    torch.testing.assert_close(D.v_from_eps_x0(sched, t, eps, x0), v, rtol=tol, atol=tol)
    torch.testing.assert_close(D.x0_from_v(sched, x_t, t, v), x0, rtol=tol, atol=tol)
    torch.testing.assert_close(D.eps_from_v(sched, x_t, t, v), eps, rtol=tol, atol=tol)
    for out in (D.x0_from_v(sched, x_t, t, v), D.predict_x0_from_eps(sched, x_t, t, eps)):
        assert out.dtype == dtype and out.shape == x0.shape


def test_round_trip_at_extreme_noise():
    # Cosine T = 1000 reaches alpha_bar ~ 2.4e-9: conversions stay exact in float64.
    f = lambda u: math.cos((u / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    betas = [min(1 - f(t + 1) / f(t), 0.999) for t in range(1000)]
    s = DiscreteSchedule(np.cumprod(1 - np.array(betas)))
    assert float(s.alphas_cumprod[-1]) < 1e-8
    t = torch.tensor([0, 500, 998, 999])
    x0 = torch.tensor([0.3, -0.2, 0.9, -1.0], dtype=torch.float64)
    eps = torch.tensor([1.0, -0.5, 2.0, 0.1], dtype=torch.float64)
    x_t = D.q_sample(s, x0, t, eps)
    v = D.v_from_eps_x0(s, t, eps, x0)
    torch.testing.assert_close(D.x0_from_v(s, x_t, t, v), x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(D.eps_from_v(s, x_t, t, v), eps, rtol=0, atol=1e-12)
    torch.testing.assert_close(D.predict_eps_from_x0(s, x_t, t, x0), eps, rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- posterior


def test_q_posterior_is_gaussian_conditioning(sched):
    """q(x_{t-1} | x_t, x0) from the joint Gaussian of (x_{t-1}, x_t) given x0.

    x_{t-1} = sqrt(ab_prev) x0 + sqrt(1 - ab_prev) e1 and x_t = sqrt(alpha_t) x_{t-1} +
    sqrt(beta_t) e2, so Var(x_{t-1}) = 1 - ab_prev, Cov = sqrt(alpha_t)(1 - ab_prev),
    Var(x_t) = alpha_t (1 - ab_prev) + beta_t; condition with the standard formula.
    """
    T = 50
    ab = cosine_alpha_bar(51)[:50]
    prev = np.concatenate([[1.0], ab[:-1]])
    alpha = ab / prev
    beta = 1 - alpha
    var11 = 1 - prev
    cov = np.sqrt(alpha) * (1 - prev)
    var22 = alpha * (1 - prev) + beta
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, size=(T, 3))
    x_t = rng.normal(size=(T, 3))
    mean = np.sqrt(prev)[:, None] * x0 + (cov / var22)[:, None] * (x_t - np.sqrt(ab)[:, None] * x0)
    var = var11 - cov**2 / var22

    m, v, logv = D.q_posterior(sched, torch.from_numpy(x0), torch.from_numpy(x_t), torch.arange(T))
    assert m.shape == (T, 3) and v.shape == (T, 1) and logv.shape == (T, 1)
    np.testing.assert_allclose(m.numpy(), mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(v.numpy()[:, 0], var, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(logv.numpy()[1:, 0], np.log(var[1:]), rtol=1e-10)
    np.testing.assert_allclose(logv.numpy()[0, 0], np.log(var[1]), rtol=1e-10)
    # At t = 0 (the paper's t = 1) the posterior is the point mass at x0.
    np.testing.assert_allclose(m.numpy()[0], x0[0], rtol=1e-12)


def test_q_posterior_float32_image_shapes(sched):
    x0 = torch.zeros(4, 3, 8, 8)
    x_t = torch.ones(4, 3, 8, 8)
    m, v, _ = D.q_posterior(sched, x0, x_t, torch.tensor([0, 1, 2, 49]))
    assert m.shape == (4, 3, 8, 8) and v.shape == (4, 1, 1, 1) and m.dtype == torch.float32


# --------------------------------------------------------------------------- randn


def test_randn_single_generator_is_torch_randn():
    a = D.randn((2, 3), torch.Generator().manual_seed(7), device="cpu", dtype=torch.float32)
    b = torch.randn((2, 3), generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_randn_per_image_generators_independent_of_batch():
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    batch = D.randn((3, 2, 4), gens([1, 2, 3]), device="cpu", dtype=torch.float64)
    alone = D.randn((1, 2, 4), gens([2]), device="cpu", dtype=torch.float64)
    assert torch.equal(batch[1], alone[0])
    assert not torch.equal(batch[0], batch[1])
    with pytest.raises(ValueError, match="one per image"):
        D.randn((2, 3), gens([1, 2, 3]), device="cpu", dtype=torch.float32)


def test_randn_half_precision_follows_float32_stream():
    a = D.randn((5,), torch.Generator().manual_seed(3), device="cpu", dtype=torch.bfloat16)
    b = D.randn((5,), torch.Generator().manual_seed(3), device="cpu", dtype=torch.float32)
    assert a.dtype == torch.bfloat16
    assert torch.equal(a, b.to(torch.bfloat16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_tables_and_randn_on_cuda(sched):
    tab = sched.tables("cuda", torch.float32)
    assert tab.alpha_bar.is_cuda and sched.tables("cuda:0", torch.float32) is tab
    x = D.randn((2, 3), torch.Generator().manual_seed(0), device="cuda", dtype=torch.float32)
    assert x.is_cuda
    x_t = D.q_sample(sched, x, torch.tensor([0, 5], device="cuda"), x)
    assert x_t.is_cuda


def test_sampling_steps_give_the_visited_timesteps_ready_for_the_loop():
    sched = D.DiscreteSchedule.from_betas(torch.linspace(1e-4, 0.02, 1000))
    ab = sched.alphas_cumprod.tolist()
    steps = D.sampling_steps(sched, [999, 500, 0], torch.zeros(4, 3, 2, 2))
    assert steps.timesteps == [999, 500, 0]
    assert steps.alpha_bar == [ab[999], ab[500], ab[0]]
    assert steps.alpha_bar_next == [ab[500], ab[0], 1.0]  # sampling ends at the clean data
    assert steps.t.dtype == torch.long and steps.t.shape == (3, 4)
    assert steps.t.tolist() == [[999] * 4, [500] * 4, [0] * 4]
    for bad in ([], [5, 5], [0, 5], [1000, 0], [3, -1]):
        with pytest.raises(ValueError, match="timesteps must be decreasing"):
            D.sampling_steps(sched, bad, torch.zeros(2))
