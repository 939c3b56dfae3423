"""The MSE loss: targets per prediction type and min-SNR-gamma weights vs their formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from denoisekit.diffusion import DiscreteSchedule
from denoisekit.plugins.losses import mse
from denoisekit.testing.conformance import check_loss

T = 40
ALPHA_BAR = np.linspace(0.999, 0.001, T)  # SNR from ~1000 down to ~0.001: spans gamma = 5
SPEC = mse.denoisekit_components()[0]


@pytest.fixture
def sched() -> DiscreteSchedule:
    return DiscreteSchedule(ALPHA_BAR)


def _batch(shape=(3, 4, 4), dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 5, 13, 20, 39])
    x0 = torch.rand((5, *shape), generator=g, dtype=dtype) * 2 - 1
    noise = torch.randn((5, *shape), generator=g, dtype=dtype)
    a = torch.from_numpy(ALPHA_BAR).to(dtype)[t].view(-1, *[1] * len(shape))
    v = a.sqrt() * noise - (1 - a).sqrt() * x0
    return t, x0, noise, {"eps": noise, "x0": x0, "v": v}


def _loss(sched, **kwargs):
    return SPEC.build(mse.MSELossConfig(**kwargs), schedule=sched)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("shape", [(3, 4, 4), (7,)])
def test_zero_at_target_and_mean_square_elsewhere(sched, prediction, shape):
    t, x0, noise, targets = _batch(shape)
    loss = _loss(sched, prediction=prediction)
    assert loss.prediction_type == prediction
    exact = loss(targets[prediction], x0=x0, noise=noise, t=t)
    assert exact.shape == (5,)
    assert float(exact.abs().max()) < 1e-14
    # Output off by c_i everywhere: loss_i = c_i² (mean over non-batch dims, no reduction).
    c = torch.tensor([0.1, -0.2, 0.3, 0.5, 1.0], dtype=torch.float64)
    off = targets[prediction] + c.view(-1, *[1] * len(shape))
    torch.testing.assert_close(loss(off, x0=x0, noise=noise, t=t), c**2, rtol=1e-12, atol=0)
    # The other targets are wrong for this prediction type.
    for other, target in targets.items():
        if other != prediction:
            assert float(loss(target, x0=x0, noise=noise, t=t).min()) > 1e-6


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("gamma", [0.5, 5.0])
def test_min_snr_weights(sched, prediction, gamma):
    """Hang et al. 2023: eps min(snr, g)/snr; x0 min(snr, g); v min(snr, g)/(snr + 1)."""
    t, x0, noise, targets = _batch()
    loss = _loss(sched, prediction=prediction, min_snr_gamma=gamma)
    snr = ALPHA_BAR[t.numpy()] / (1 - ALPHA_BAR[t.numpy()])
    clipped = np.minimum(snr, gamma)
    weight = {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}[prediction]
    assert (snr > gamma).any() and (snr < gamma).any()
    got = loss(targets[prediction] + 1.0, x0=x0, noise=noise, t=t)  # unweighted loss = 1
    np.testing.assert_allclose(got.numpy(), weight, rtol=1e-12)


def test_float32_and_half_outputs(sched):
    t, x0, noise, targets = _batch(dtype=torch.float32)
    loss = _loss(sched, prediction="v", min_snr_gamma=5.0)
    out = loss(targets["v"].half(), x0=x0, noise=noise, t=t)
    assert out.dtype == torch.float32 and out.shape == (5,)
    assert float(out.max()) < 1e-5  # only the half rounding of the output remains


def test_gradient_is_weighted_residual(sched):
    t, x0, noise, targets = _batch()
    loss = _loss(sched, prediction="x0")
    out = (targets["x0"] + 0.5).requires_grad_()
    loss(out, x0=x0, noise=noise, t=t).sum().backward()
    n = out[0].numel()
    torch.testing.assert_close(out.grad, torch.full_like(out, 2 * 0.5 / n))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"prediction": "score"}, "prediction"),
        ({"min_snr_gamma": 0.0}, "min_snr_gamma"),
        ({"min_snr_gamma": -1.0}, "min_snr_gamma"),
    ],
)
def test_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=f"'{field}'"):
        mse.MSELossConfig(**kwargs)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("gamma", [None, 5.0])
def test_loss_conformance(prediction, gamma):
    check_loss(SPEC, mse.MSELossConfig(prediction=prediction, min_snr_gamma=gamma))


def test_accepts_any_noise_schedule():
    class Foreign:
        num_timesteps = T
        alphas_cumprod = torch.from_numpy(ALPHA_BAR)

    t, x0, noise, targets = _batch()
    loss = SPEC.build(mse.MSELossConfig(prediction="v", min_snr_gamma=5.0), schedule=Foreign())
    assert float(loss(targets["v"], x0=x0, noise=noise, t=t).abs().max()) < 1e-14
