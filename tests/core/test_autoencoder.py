"""``denoisekit.autoencoder`` (the posterior's KL and samples against closed forms) and
``denoisekit.engine.latents`` (the latent normalisation, and calibration to zero-mean
unit-variance latents per channel)."""

from __future__ import annotations

import math

import pytest
import torch

import denoisekit
from denoisekit.autoencoder import DiagonalGaussian
from denoisekit.engine.latents import calibrate, denormalize_latents, normalize_latents


def _dist(shape=(3, 2, 4, 4), seed=0, dtype=torch.float64) -> DiagonalGaussian:
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(shape, generator=g, dtype=dtype)
    logvar = torch.randn(shape, generator=g, dtype=dtype).clamp(-3, 3)
    return DiagonalGaussian(mean, logvar)


def test_the_public_api_names_it():
    assert denoisekit.DiagonalGaussian is DiagonalGaussian
    assert "encode" in dir(denoisekit.Autoencoder)


def test_kl_is_the_closed_form_and_torch_distributions():
    dist = _dist()
    # Independent derivation: torch.distributions' Normal-Normal KL, summed per image.
    q = torch.distributions.Normal(dist.mean, torch.exp(0.5 * dist.logvar))
    p = torch.distributions.Normal(torch.zeros_like(dist.mean), torch.ones_like(dist.mean))
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    torch.testing.assert_close(dist.kl(), expected)
    assert dist.kl().shape == (3,)
    # KL(N(0, 1) || N(0, 1)) = 0; one value with mean m, var 1: m^2 / 2.
    zeros = torch.zeros(2, 1, 1, 1, dtype=torch.float64)
    assert torch.equal(DiagonalGaussian(zeros, zeros).kl(), torch.zeros(2, dtype=torch.float64))
    m = torch.full((1, 1, 1, 1), 3.0, dtype=torch.float64)
    assert DiagonalGaussian(m, torch.zeros_like(m)).kl().item() == pytest.approx(4.5)


def test_logvar_is_clamped_as_ldm_and_diffusers_clamp_it():
    logvar = torch.tensor([-50.0, 0.5, 50.0]).view(1, 3, 1, 1)
    dist = DiagonalGaussian(torch.ones(1, 3, 1, 1), logvar)
    assert dist.logvar.flatten().tolist() == [-30.0, 0.5, 20.0]
    assert dist.mode() is dist.mean
    with pytest.raises(ValueError, match="differ"):
        DiagonalGaussian(torch.zeros(1, 2), torch.zeros(1, 3))


def test_samples_have_the_mean_and_std():
    mean = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64).reshape(1, 3, 1, 1)
    logvar = torch.tensor([0.0, -2.0, 1.0], dtype=torch.float64).reshape(1, 3, 1, 1)
    n = 20_000
    dist = DiagonalGaussian(mean.expand(n, 3, 1, 1), logvar.expand(n, 3, 1, 1))
    z = dist.sample(torch.Generator().manual_seed(0))
    assert z.dtype == torch.float64 and z.shape == (n, 3, 1, 1)
    std = torch.exp(0.5 * logvar).flatten()
    # Sample mean within 5 standard errors; sample std within 5 of its standard error.
    assert ((z.mean(0).flatten() - mean.flatten()).abs() < 5 * std / math.sqrt(n)).all()
    assert ((z.std(0).flatten() - std).abs() < 5 * std / math.sqrt(2 * n)).all()


def test_samples_per_image_generators_do_not_depend_on_the_batch():
    dist = _dist(dtype=torch.float32)
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    whole = dist.sample(gens)
    alone = DiagonalGaussian(dist.mean[1:2], dist.logvar[1:2]).sample(
        [torch.Generator().manual_seed(1)]
    )
    assert torch.equal(whole[1:2], alone)
    assert whole.dtype == torch.float32


class Affine(torch.nn.Module):
    """A toy autoencoder: latents = a * x + b per channel, posterior std s per channel."""

    def __init__(self, a, b, s) -> None:
        super().__init__()
        self.a, self.b = torch.tensor(a).view(1, -1, 1, 1), torch.tensor(b).view(1, -1, 1, 1)
        self.logvar = torch.log(torch.tensor(s).square()).view(1, -1, 1, 1)
        self.register_buffer("shift", torch.zeros(len(a)))
        self.register_buffer("scale", torch.ones(len(a)))
        self.modes: list[bool] = []

    def encode(self, x):
        self.modes.append(self.training)
        mean = self.a * x + self.b
        return DiagonalGaussian(mean, self.logvar.expand_as(mean))

    def decode(self, z):
        return (z - self.b) / self.a


def _images(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 2, 6, 6, generator=g) * 2 - 1  # uniform: mean 0, var 1/3


def test_calibrate_makes_latents_zero_mean_unit_variance_per_channel():
    ae = Affine([3.0, 0.5], [1.0, -2.0], [0.7, 0.1])
    images = _images(512)
    shift, scale = calibrate(ae, images.split(100))
    # The latents stage 2 trains on: fresh samples of the posterior, normalised.
    z = normalize_latents(ae, ae.encode(images).sample(torch.Generator().manual_seed(2)))
    per_channel = z.transpose(0, 1).flatten(1)  # (C, N*h*w)
    n = per_channel.shape[1]
    assert (per_channel.mean(1).abs() < 5 / math.sqrt(n)).all(), per_channel.mean(1)
    assert ((per_channel.var(1) - 1).abs() < 5 * math.sqrt(2 / n)).all(), per_channel.var(1)
    # Against the population values: Var z = a^2 / 3 + s^2, mean b (uniform images).
    expected_std = torch.tensor([math.sqrt(9 / 3 + 0.49), math.sqrt(0.25 / 3 + 0.01)])
    torch.testing.assert_close(1 / scale, expected_std, rtol=0.05, atol=0)
    torch.testing.assert_close(shift, torch.tensor([1.0, -2.0]), rtol=0, atol=0.05)
    assert torch.equal(ae.shift, shift) and torch.equal(ae.scale, scale)  # stored


def test_calibrate_mode_uses_the_means_and_is_exact():
    ae = Affine([2.0, 1.0], [0.0, 0.5], [3.0, 3.0])
    images = _images(64)
    shift, scale = calibrate(ae, [images], posterior="mode")
    means = ae.encode(images).mode().double().transpose(0, 1).flatten(1)
    torch.testing.assert_close(shift.double(), means.mean(1), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(scale.double(), 1 / means.std(1, unbiased=False), rtol=1e-6, atol=0)


def test_calibrate_encodes_in_eval_mode_and_restores_training():
    ae = Affine([1.0, 1.0], [0.0, 0.0], [1.0, 1.0])
    ae.train()
    calibrate(ae, [_images(4)])
    assert ae.modes == [False] and ae.training


def test_calibrate_refuses_no_images_a_constant_channel_and_an_unknown_posterior():
    ae = Affine([1.0, 0.0], [0.0, 0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="at least one image"):
        calibrate(ae, [])
    with pytest.raises(ValueError, match=r"channel\(s\) \[1\] are constant"):
        calibrate(ae, [_images(8)], posterior="mode")
    with pytest.raises(ValueError, match="'sample' or 'mode'"):
        calibrate(ae, [_images(8)], posterior="mean")
    assert torch.equal(ae.scale, torch.ones(2))  # nothing stored


def test_normalize_and_denormalize_are_inverse_per_channel():
    ae = Affine([1.0, 1.0, 1.0], [0.0] * 3, [1.0] * 3)
    ae.shift.copy_(torch.tensor([0.5, -1.0, 2.0]))
    ae.scale.copy_(torch.tensor([2.0, 0.25, 1.0]))
    z = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    n = normalize_latents(ae, z)
    assert n.dtype == torch.float64
    torch.testing.assert_close(n[:, 1], (z[:, 1] + 1.0) * 0.25)
    torch.testing.assert_close(denormalize_latents(ae, n), z)
