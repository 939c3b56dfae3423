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
    with pytest.raises(TypeError, match="integer"):
        den.predict(x_t, t.float())
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
