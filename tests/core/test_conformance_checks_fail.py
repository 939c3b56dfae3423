"""The conformance checks of denoisekit.testing catch what they claim to catch.

Each test hands a check a component broken in one way and expects that check's message.
"""

from __future__ import annotations

import attrs
import pytest
import torch

from denoisekit import ComponentSpec
from denoisekit.autoencoder import DiagonalGaussian
from denoisekit.plugins.autoencoders.kl import KLAutoencoder, KLConfig
from denoisekit.plugins.losses import mse
from denoisekit.plugins.samplers import ddim
from denoisekit.testing.conformance import (
    check_autoencoder,
    check_config_roundtrip,
    check_loss,
    check_sampler,
    check_schedule,
)


@attrs.frozen(kw_only=True)
class Empty:
    """No options."""


def _spec(kind: str, build, config=Empty) -> ComponentSpec:
    return ComponentSpec(kind=kind, name="broken", config=config, build=build, summary="broken")


def test_check_config_roundtrip_catches_a_lossy_config():
    @attrs.frozen(kw_only=True)
    class Doubling:
        """A converter that changes the value again on every structuring."""

        scale: float = attrs.field(default=1.0, converter=lambda v: 2 * v)

    spec = _spec("schedule", lambda cfg: None, Doubling)
    with pytest.raises(AssertionError, match="does not survive a cattrs round trip"):
        check_config_roundtrip(spec)


def test_check_schedule_catches_an_increasing_alpha_bar():
    class Rising:  # DiscreteSchedule refuses this; a plugin's own class might not
        num_timesteps = 10
        alphas_cumprod = torch.linspace(0.1, 0.9, 10, dtype=torch.float64)

    spec = _spec("schedule", lambda cfg: Rising())
    with pytest.raises(AssertionError, match="not strictly decreasing"):
        check_schedule(spec)


def test_check_loss_catches_a_batch_mean_and_a_wrong_target():
    class MeanLoss(mse.MSELoss):
        def __call__(self, model_output, **kwargs):
            return super().__call__(model_output, **kwargs).mean()

    class WrongTarget(mse.MSELoss):
        def target(self, *, x0, noise, t):
            return x0  # claims eps, regresses onto x0

    for cls, message in [(MeanLoss, r"shape \(B,\)"), (WrongTarget, "not 0 when the output")]:
        spec = _spec("loss", lambda cfg, schedule, cls=cls: cls(schedule, "eps"))
        with pytest.raises(AssertionError, match=message):
            check_loss(spec)


def test_check_sampler_catches_a_sampler_that_edits_x_T():
    class InPlace(ddim.DDIMSampler):
        def sample(self, denoiser, x_T, **kwargs):
            x_T.mul_(0.5)  # the caller's tensor, changed
            return super().sample(denoiser, x_T, **kwargs)

    spec = _spec("sampler", lambda cfg: InPlace(ddim.DDIMConfig(steps=5)))
    with pytest.raises(AssertionError, match="modified the x_T it was given"):
        check_sampler(spec)


def test_check_sampler_catches_a_sampler_that_clamps_latents():
    class Clamping(ddim.DDIMSampler):  # 0.1's contract: always [-1, 1]
        def sample(self, denoiser, x_T, **kwargs):
            return super().sample(denoiser, x_T, **kwargs).clamp(-1.0, 1.0)

    spec = _spec("sampler", lambda cfg: Clamping(ddim.DDIMConfig(steps=5)))
    with pytest.raises(AssertionError, match=r"^sampler 'broken': clamps latents: with data_"):
        check_sampler(spec)


# --------------------------------------------------------------------------- what a plugin raises


def test_a_sampler_that_raises_fails_with_the_property_being_checked():
    class Raising(ddim.DDIMSampler):
        def sample(self, denoiser, x_T, **kwargs):
            raise ValueError("only one element tensors can be converted to Python scalars")

    spec = _spec("sampler", lambda cfg: Raising(ddim.DDIMConfig(steps=5)))
    with pytest.raises(AssertionError) as info:
        check_sampler(spec)
    assert str(info.value) == (
        "sampler 'broken': 1. shape, dtype and range of the output; evaluations counted: it "
        "raised ValueError: only one element tensors can be converted to Python scalars"
    )
    assert isinstance(info.value.__cause__, ValueError)


def test_a_sampler_failing_only_with_a_callback_is_named_at_that_property():
    class NoCallback(ddim.DDIMSampler):
        def sample(self, denoiser, x_T, *, generator, cond=None, callback=None):
            if callback is not None:
                raise NotImplementedError("callbacks")
            return super().sample(denoiser, x_T, generator=generator, cond=cond)

    spec = _spec("sampler", lambda cfg: NoCallback(ddim.DDIMConfig(steps=5)))
    with pytest.raises(AssertionError, match=r"^sampler 'broken': 5\. the callback, once per "
                       r"step: it raised NotImplementedError: callbacks$"):
        check_sampler(spec)


def test_the_previous_releases_sampler_fails_on_its_signature():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).with_name("sampler_v01.py")
    module_spec = importlib.util.spec_from_file_location("sampler_v01_kit", path)
    module = importlib.util.module_from_spec(module_spec)
    with pytest.warns(DeprecationWarning):  # it imports start_noise and batch_timesteps
        module_spec.loader.exec_module(module)
    (spec,) = module.denoisekit_components()
    with pytest.raises(AssertionError, match=(
        r"^sampler 'ddim-v01': its contract's signatures: DDIMSampler\.sample\(denoiser, shape, "
        r".*'x_T' is keyword-only here, but the host passes it second, positionally"
    )):
        check_sampler(spec)


def test_a_build_or_a_loss_that_raises_is_named_too():
    def failing_build(cfg):
        raise OSError("weights not found")

    with pytest.raises(AssertionError, match=r"^sampler 'broken': building it \(spec\.build\): "
                       r"it raised OSError: weights not found$"):
        check_sampler(_spec("sampler", failing_build))

    class Crashing(mse.MSELoss):
        def __call__(self, model_output, **kwargs):
            raise RuntimeError("shape mismatch")

    spec = _spec("loss", lambda cfg, schedule: Crashing(schedule, "eps"))
    with pytest.raises(AssertionError, match=r"^loss 'broken': a \(B,\) loss, 0 exactly at the "
                       r"target: it raised RuntimeError: shape mismatch$"):
        check_loss(spec)


class _LyingShape(KLAutoencoder):
    def latent_shape(self, image_shape):
        c, h, w = super().latent_shape(image_shape)
        return (c, h * 2, w * 2)


class _BatchNormalised(KLAutoencoder):
    def encode(self, x):
        dist = super().encode(x)
        return DiagonalGaussian(dist.mean - dist.mean.mean(dim=0), dist.logvar)


class _UnsavedShift(KLAutoencoder):
    def __init__(self, config):
        super().__init__(config)
        del self.shift
        self.shift = torch.zeros(self.latent_channels)  # an attribute, not a buffer


class _UnusedLayer(KLAutoencoder):
    def __init__(self, config):
        super().__init__(config)
        self.spare = torch.nn.Linear(2, 2)


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (_LyingShape, "latent_shape says"),
        (_BatchNormalised, "depends on the other images of the batch"),
        (_UnsavedShift, r"shift must be a \(2,\) buffer in the state dict"),
        (_UnusedLayer, "parameters get no gradient"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else "",
)
def test_check_autoencoder_catches_a_broken_autoencoder(cls, message):
    options = {"in_channels": 1, "block_channels": (8, 16), "num_res_blocks": 1,
               "latent_channels": 2, "groups": 4}  # fmt: skip
    spec = ComponentSpec(
        kind="autoencoder", name="broken", config=KLConfig, build=cls, probe=options
    )
    with pytest.raises(AssertionError, match=message):
        check_autoencoder(spec)
