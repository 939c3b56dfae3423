"""denoisekit.denoiser.Denoiser: parameterizations, model time, evaluation counting."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from denoisekit.denoiser import Denoiser
from denoisekit.diffusion import DiscreteSchedule
from denoisekit.errors import ComponentError

T = 30
# alpha_bar_t = exp(-0.2 t) for t = 1..T: an arbitrary strictly decreasing schedule.
ALPHA_BAR = np.exp(-0.2 * np.arange(1, T + 1))


@pytest.fixture
def sched() -> DiscreteSchedule:
    return DiscreteSchedule(ALPHA_BAR)


class Fixed(torch.nn.Module):
    """Returns a preset tensor and records what it was called with."""

    def __init__(self, out: torch.Tensor, time_input: str | None = None) -> None:
        super().__init__()
        self.out = out
        self.calls: list[tuple] = []
        if time_input is not None:
            self.time_input = time_input

    def forward(self, x_t, t, *rest):
        self.calls.append((x_t, t, *rest))
        return self.out


def _truth(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 7, 15, 29])
    x0 = torch.rand(4, 3, 2, 2, generator=g, dtype=dtype) * 2 - 1
    eps = torch.randn(4, 3, 2, 2, generator=g, dtype=dtype)
    a = torch.from_numpy(ALPHA_BAR).to(dtype)[t].view(4, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    return t, x0, eps, x_t, {"eps": eps, "x0": x0, "v": v}


@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
def test_predict_recovers_eps_and_x0(sched, prediction_type):
    t, x0, eps, x_t, targets = _truth()
    den = Denoiser(Fixed(targets[prediction_type]), sched, prediction_type)
    eps_hat, x0_hat = den.predict(x_t, t)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-10, atol=1e-10)


def test_model_time_timestep(sched):
    t, *_, x_t, targets = _truth()
    model = Fixed(targets["eps"])
    den = Denoiser(model, sched)
    den.predict(x_t, t)
    time = model.calls[0][1]
    assert time.dtype == torch.float64  # float64 state keeps float64 time
    assert time.tolist() == [0.0, 7.0, 15.0, 29.0]
    assert den.model_time(t).dtype == torch.float32


def test_model_time_log_snr(sched):
    t, *_, x_t, targets = _truth()
    model = Fixed(targets["eps"], time_input="log_snr")
    den = Denoiser(model, sched)
    den.predict(x_t, t)
    expected = [math.log(ALPHA_BAR[i] / (1 - ALPHA_BAR[i])) for i in t.tolist()]
    np.testing.assert_allclose(model.calls[0][1].numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(den.model_time(t).numpy(), expected, rtol=1e-6)


def test_cond_passed_only_when_given(sched):
    t, *_, x_t, targets = _truth()
    model = Fixed(targets["eps"])
    den = Denoiser(model, sched)
    den.predict(x_t, t)
    cond = torch.tensor([1, 2, 3, 4])
    den.predict(x_t, t, cond)
    assert len(model.calls[0]) == 2
    assert model.calls[1][2] is cond


def test_num_evaluations_counts_and_restarts(sched):
    t, *_, x_t, targets = _truth()
    den = Denoiser(Fixed(targets["eps"]), sched)
    assert den.num_evaluations == 0
    for _ in range(3):
        den.predict(x_t, t)
    assert den.num_evaluations == 3
    den.num_evaluations = 0  # restart the count
    den.predict(x_t, t)
    assert den.num_evaluations == 1


def test_scalar_timestep_broadcasts(sched):
    _, _, _, x_t, targets = _truth()
    model = Fixed(targets["eps"])
    Denoiser(model, sched).predict(x_t, 5)
    assert model.calls[0][1].tolist() == [5.0] * 4


def test_half_precision_output_is_upcast(sched):
    t, _, _, x_t, targets = _truth(torch.float32)
    den = Denoiser(Fixed(targets["eps"].half()), sched)
    eps_hat, x0_hat = den.predict(x_t, t)
    assert eps_hat.dtype == torch.float32 and x0_hat.dtype == torch.float32


def test_errors(sched):
    t, *_, x_t, targets = _truth()
    with pytest.raises(ValueError, match="prediction_type"):
        Denoiser(Fixed(targets["eps"]), sched, "score")
    with pytest.raises(ValueError, match="time_input"):
        Denoiser(Fixed(targets["eps"], time_input="sigma"), sched)
    den = Denoiser(Fixed(targets["eps"]), sched)
    with pytest.raises(TypeError, match="integer or floating"):
        den.predict(x_t, t > 3)
    bad = Denoiser(Fixed(torch.zeros(4, 6, 2, 2, dtype=torch.float64)), sched)
    expected = "the backbone Fixed returned shape (4, 6, 2, 2) for an input of shape (4, 3, 2, 2)"
    with pytest.raises(ComponentError, match="^" + re.escape(expected)):
        bad.predict(x_t, t)
    named = Denoiser(Fixed((targets["eps"],)), sched, name="backbone 'net' (Net, plugin 'p')")
    with pytest.raises(
        ComponentError, match=re.escape("backbone 'net' (Net, plugin 'p') returned a tuple")
    ):
        named.predict(x_t, t)


class ForeignSchedule:
    """A third-party NoiseSchedule: only the protocol's two attributes."""

    num_timesteps = T

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.from_numpy(ALPHA_BAR)


def test_accepts_any_noise_schedule():
    t, x0, eps, x_t, targets = _truth()
    den = Denoiser(Fixed(targets["v"]), ForeignSchedule(), "v")
    assert isinstance(den.schedule, DiscreteSchedule)
    eps_hat, x0_hat = den.predict(x_t, t)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- fractional t


class Smooth(torch.nn.Module):
    """A backbone smooth in ``t``: its output depends on the time it is given."""

    def __init__(self, time_input: str = "timestep") -> None:
        super().__init__()
        self.time_input = time_input

    def forward(self, x_t, t):
        return torch.tanh(x_t) * (0.5 + 0.01 * t.view(-1, 1, 1, 1))


@pytest.mark.parametrize("time_input", ["timestep", "log_snr"])
@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("t_dtype", [torch.float32, torch.float64])
def test_fractional_t_at_integers_is_the_integer_path_bit_for_bit(
    sched, time_input, prediction_type, dtype, t_dtype
):
    t, *_, x_t, _ = _truth(dtype)
    t = torch.tensor([0, 1, 7, 15, 28, 29, 29, 3])
    x_t = torch.cat([x_t, x_t])
    den = Denoiser(Smooth(time_input), sched, prediction_type)
    eps_i, x0_i = den.predict(x_t, t)
    eps_f, x0_f = den.predict(x_t, t.to(t_dtype))
    assert torch.equal(eps_i, eps_f) and torch.equal(x0_i, x0_f)
    assert torch.equal(den.model_time(t, dtype), den.model_time(t.to(t_dtype), dtype))


def _log_snr_between(t: float) -> float:
    """The log-SNR at fractional ``t``, linear between the neighbouring steps (float64)."""
    lo = min(math.floor(t), T - 1)
    hi = min(lo + 1, T - 1)
    ls = np.log(ALPHA_BAR) - np.log1p(-ALPHA_BAR)
    return float(ls[lo] + (t - lo) * (ls[hi] - ls[lo]))


@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
def test_fractional_t_interpolates_the_schedule_in_log_snr(sched, prediction_type):
    """Against the closed form at alpha_bar = sigmoid(log-SNR), the log-SNR linear between
    steps (k-diffusion's DiscreteSchedule.t_to_sigma: log-sigma linear, the same thing)."""
    ts = [0.25, 3.5, 7.9, 28.999]
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 3, 2, 2, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
    ab = torch.tensor([1 / (1 + math.exp(-_log_snr_between(t))) for t in ts], dtype=torch.float64)
    a = ab.view(4, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    target = {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction_type]
    model = Fixed(target, time_input="log_snr")
    t = torch.tensor(ts, dtype=torch.float64)
    eps_hat, x0_hat = Denoiser(model, sched, prediction_type).predict(x_t, t)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-10, atol=1e-10)
    expected_time = [_log_snr_between(t) for t in ts]
    np.testing.assert_allclose(model.calls[0][1].numpy(), expected_time, rtol=1e-12)
    plain = Fixed(target)
    Denoiser(plain, sched, prediction_type).predict(x_t, t)
    assert plain.calls[0][1].tolist() == ts  # the backbone gets the fractional t itself


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fractional_t_is_continuous_between_and_across_steps(sched, dtype):
    """Approaching a step from either side tends to the integer path's value; in between
    the output moves monotonically from one step's to the next."""
    x_t = torch.full((1, 1, 1, 1), 0.3, dtype=dtype)
    den = Denoiser(Smooth(), sched, "eps")

    def x0_at(t: float | int) -> float:
        tt = torch.tensor([t]) if isinstance(t, int) else torch.tensor([t], dtype=torch.float64)
        return den.predict(x_t, tt)[1].item()

    tol = 1e-9 if dtype == torch.float64 else 1e-5
    for k in (1, 7, 15, 28):
        exact = x0_at(k)
        for delta in (1e-3, 1e-6):
            assert abs(x0_at(k - delta) - exact) < 50 * delta * abs(exact) + tol
            assert abs(x0_at(k + delta) - exact) < 50 * delta * abs(exact) + tol
        between = [x0_at(k + f) for f in np.linspace(0.0, 1.0, 11)[1:-1]]
        ends = sorted([exact, x0_at(k + 1)])
        assert all(ends[0] - tol <= v <= ends[1] + tol for v in between)
        steps = np.diff([exact, *between, x0_at(k + 1)])
        assert (steps >= -tol).all() or (steps <= tol).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
@pytest.mark.parametrize("time_input", ["timestep", "log_snr"])
def test_fractional_t_makes_no_host_device_sync_on_cuda(sched, time_input):
    x_t = torch.randn(8, 3, 4, 4, device="cuda")
    den = Denoiser(Smooth(time_input).cuda(), sched, "v")
    t = torch.linspace(0.0, T - 1, 8, dtype=torch.float64, device="cuda")
    den.predict(x_t, t)  # the schedule's tables are copied to the device once, here
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        den.predict(x_t, t)
        den.predict(x_t, t.round().long())
    finally:
        torch.cuda.set_sync_debug_mode("default")
