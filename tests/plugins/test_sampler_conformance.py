"""Every built-in sampler meets the sampler contract (denoisekit.testing.conformance)."""

from __future__ import annotations

import pytest
import torch

from denoisekit.denoiser import Denoiser
from denoisekit.plugins.samplers import ddim, ddpm
from denoisekit.testing import conformance
from denoisekit.testing.conformance import ToyBackbone, check_sampler, spec_id, toy_schedule

# Collected from the plugin modules' registration hooks (the registry is tested elsewhere).
SPECS = [*ddpm.denoisekit_components(), *ddim.denoisekit_components()]
BY_NAME = {spec.name: spec for spec in SPECS}


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_builtin_sampler_default_config(spec):
    assert spec.kind == "sampler"
    check_sampler(spec)


@pytest.mark.parametrize(
    "name, config",
    [
        ("ddpm", ddpm.DDPMConfig(steps=10, variance="fixed_large", spacing="trailing")),
        ("ddpm", ddpm.DDPMConfig(steps=1, clip_denoised=False)),
        ("ddim", ddim.DDIMConfig(steps=7, eta=1.0, spacing="trailing")),
        ("ddim", ddim.DDIMConfig(steps=100, eta=0.5, spacing="linspace", clip_denoised=False)),
    ],
    ids=str,
)
def test_builtin_sampler_other_configs(name, config):
    check_sampler(BY_NAME[name], config)


# --------------------------------------------------------------------------- the checker


class MiscountingSampler:
    """Claims one evaluation fewer than it makes: check_sampler must notice."""

    def num_evaluations(self, num_timesteps: int) -> int:
        return 2

    def sample(self, denoiser, x_T, *, generator, cond=None, callback=None):
        x = x_T
        for i in range(3):
            _, x0 = denoiser.predict(x, torch.full((x.shape[0],), 5, dtype=torch.long), cond)
            if callback is not None:
                callback({"i": i, "t": 5, "x_t": x, "x0": x0})
        return x0.clamp(-1, 1)


def test_check_sampler_catches_a_miscount():
    spec = ddim.denoisekit_components()[0]
    bad = type(spec)(
        kind="sampler", name="bad", config=ddim.DDIMConfig, build=lambda cfg: MiscountingSampler()
    )
    with pytest.raises(AssertionError, match="3 network evaluations"):
        check_sampler(bad)


def test_check_sampler_catches_range_violation():
    class Unclamped(MiscountingSampler):
        def num_evaluations(self, num_timesteps):
            return 3

        def sample(self, *args, **kwargs):
            return 5 * super().sample(*args, **kwargs) + 3

    spec = ddim.denoisekit_components()[0]
    bad = type(spec)(
        kind="sampler", name="bad", config=ddim.DDIMConfig, build=lambda cfg: Unclamped()
    )
    with pytest.raises(AssertionError, match=r"leaves \[-1, 1\]"):
        check_sampler(bad)


def test_toy_backbone_is_elementwise_and_batch_independent():
    model = ToyBackbone(2)
    x = torch.randn(3, 2, 4, 4)
    t = torch.tensor([1.0, 2.0, 3.0])
    full = model(x, t)
    assert torch.equal(model(x[1:2], t[1:2])[0], full[1])
    den = Denoiser(model, toy_schedule(20))
    den.predict(x, torch.tensor([0, 5, 19]))
    assert model.calls == 3 and den.num_evaluations == 1
    assert conformance.toy_schedule(20).num_timesteps == 20
