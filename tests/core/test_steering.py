"""Classifier-free guidance, inpainting and truncated schedules, through the denoiser."""

from __future__ import annotations

import itertools

import pytest
import torch

from denoisekit import NULL_CLASS
from denoisekit.denoiser import Denoiser
from denoisekit.engine.steering import GuidedDenoiser, InpaintingDenoiser, truncated
from denoisekit.plugins.samplers.ddim import DDIMConfig, DDIMSampler
from tests.plugins.sampler_oracles import cos_sched


class ToyConditional(torch.nn.Module):
    """A nonlinear class-conditional eps model; label -1 is the null class."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(num_classes + 1, 1)
        torch.nn.init.normal_(
            self.embed.weight, std=0.5, generator=torch.Generator().manual_seed(0)
        )
        self.num_classes = num_classes
        self.batches: list[int] = []

    def forward(self, x, t, cond=None):
        self.batches.append(x.shape[0])
        labels = torch.full((x.shape[0],), NULL_CLASS) if cond is None else cond
        labels = labels.masked_fill(labels == NULL_CLASS, self.num_classes)
        shift = self.embed(labels).view(-1, 1, 1, 1)
        return torch.tanh(x + shift) * (0.5 + 0.001 * t.view(-1, 1, 1, 1))


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = ToyConditional()
    x = torch.randn(4, 1, 3, 3)
    t = torch.tensor([10, 500, 900, 999])
    cond = torch.tensor([0, 1, 2, 1])
    return model, cos_sched(1000), x, t, cond


def guided(model, sched, **kw):
    return GuidedDenoiser(model, sched, "eps", **kw)


def test_scale_one_is_the_conditional_and_zero_the_unconditional_prediction_exactly(setup):
    model, sched, x, t, cond = setup
    plain = Denoiser(model, sched, "eps")
    for got, want in [
        (guided(model, sched, scale=1.0).predict(x, t, cond), plain.predict(x, t, cond)),
        (guided(model, sched, scale=0.0).predict(x, t, cond), plain.predict(x, t, cond * 0 - 1)),
    ]:
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_guidance_is_one_forward_of_the_doubled_batch_and_combines_linearly(setup):
    model, sched, x, t, cond = setup
    den = guided(model, sched, scale=3.0)
    model.batches.clear()
    eps, _ = den.predict(x, t, cond)
    assert model.batches == [8] and den.num_evaluations == 1
    plain = Denoiser(model, sched, "eps")
    c, _ = plain.predict(x, t, cond)
    u, _ = plain.predict(x, t, torch.full_like(cond, -1))
    torch.testing.assert_close(eps, u + 3.0 * (c - u), rtol=0, atol=1e-6)


def test_rescale_matches_the_formula_of_lin_et_al(setup):
    model, sched, x, t, cond = setup
    plain = Denoiser(model, sched, "eps")
    c, _ = plain.predict(x, t, cond)
    u, _ = plain.predict(x, t, torch.full_like(cond, -1))
    cfg = u + 4.0 * (c - u)
    std = lambda v: v.flatten(1).std(dim=1).view(-1, 1, 1, 1)  # noqa: E731
    want = 0.7 * cfg * std(c) / std(cfg) + 0.3 * cfg
    eps, _ = guided(model, sched, scale=4.0, rescale=0.7).predict(x, t, cond)
    torch.testing.assert_close(eps, want, rtol=0, atol=1e-6)


def test_outside_the_interval_the_prediction_is_the_conditional_one(setup):
    model, sched, x, t, cond = setup
    eps, _ = guided(model, sched, scale=4.0, interval=(0.2, 0.8)).predict(x, t, cond)
    c, _ = Denoiser(model, sched, "eps").predict(x, t, cond)
    assert torch.equal(eps[[0, 2, 3]], c[[0, 2, 3]])  # t/T = 0.01, 0.9, 0.999
    assert not torch.allclose(eps[1], c[1])


def test_guidance_without_labels_is_an_error(setup):
    model, sched, x, t, _ = setup
    with pytest.raises(ValueError, match="class labels"):
        guided(model, sched, scale=2.0).predict(x, t, None)


def ddim(steps=10):
    return DDIMSampler(DDIMConfig(steps=steps, eta=0.0))


def test_inpainting_with_everything_known_returns_the_input(setup):
    model, sched, _, _, cond = setup
    known = torch.rand(4, 1, 3, 3) * 2 - 1
    x_T = torch.randn(4, 1, 3, 3)
    den = InpaintingDenoiser(Denoiser(model, sched), known, torch.zeros(1, 1, 3, 3), x_T)
    out = ddim().sample(den, x_T, generator=None, cond=cond)
    torch.testing.assert_close(out, known, rtol=0, atol=1e-6)


def test_inpainting_with_nothing_known_is_plain_sampling(setup):
    model, sched, _, _, cond = setup
    known = torch.zeros(4, 1, 3, 3)
    x_T = torch.randn(4, 1, 3, 3)
    den = InpaintingDenoiser(Denoiser(model, sched), known, torch.ones(1, 1, 3, 3), x_T)
    out = ddim().sample(den, x_T, generator=None, cond=cond)
    plain = ddim().sample(Denoiser(model, sched), x_T, generator=None, cond=cond)
    torch.testing.assert_close(out, plain, rtol=0, atol=1e-6)


def test_inpainting_keeps_known_pixels_and_fills_the_rest(setup):
    model, sched, _, _, cond = setup
    known = torch.rand(4, 1, 3, 3) * 2 - 1
    mask = torch.zeros(1, 1, 3, 3)
    mask[..., 0, :] = 1  # regenerate the top row
    x_T = torch.randn(4, 1, 3, 3)
    den = InpaintingDenoiser(Denoiser(model, sched), known, mask, x_T)
    out = ddim().sample(den, x_T, generator=None, cond=cond)
    torch.testing.assert_close(out[..., 1:, :], known[..., 1:, :], rtol=0, atol=1e-6)
    assert (out[..., 0, :] - known[..., 0, :]).abs().max() > 1e-2


def test_a_truncated_denoiser_keeps_timestep_indices(setup):
    model, sched, x, t, cond = setup
    plain = Denoiser(model, sched)
    short = truncated(plain, 600)
    assert short.schedule.num_timesteps == 601 and plain.schedule.num_timesteps == 1000
    for a, b in zip(
        short.predict(x[:2], t[:2], cond[:2]), plain.predict(x[:2], t[:2], cond[:2]), strict=True
    ):
        assert torch.equal(a, b)


def test_repaint_schedule_matches_the_papers_time_travel():
    from denoisekit.engine.repaint import num_evaluations, repaint_schedule

    path = repaint_schedule(6, 2, 3)
    # down 6 -> 3 ... with two jumps back of 2 steps at positions 2 and 0
    assert path[0] == 5 and path[-1] == -1
    rises = sum(1 for a, b in itertools.pairwise(path) if b > a)
    assert rises == 2 * 2 * 2  # two jump points x (resample - 1) x jump_length
    assert num_evaluations(6, 2, 3) == 6 + 2 * 2 * 2
    assert repaint_schedule(5, 10, 10) == [4, 3, 2, 1, 0, -1]  # no room for a jump


def test_repaint_keeps_known_pixels_and_all_known_returns_the_input(setup):
    from denoisekit.engine.repaint import repaint

    model, sched, _, _, cond = setup
    known = torch.rand(4, 1, 3, 3) * 2 - 1
    x_T = torch.randn(4, 1, 3, 3)
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    den = Denoiser(model, sched)
    out = repaint(
        den,
        x_T,
        known,
        torch.zeros(1, 1, 3, 3),
        steps=20,
        jump_length=5,
        resample=3,
        generator=gens,
        cond=cond,
    )
    torch.testing.assert_close(out, known, rtol=0, atol=1e-6)
    mask = torch.zeros(1, 1, 3, 3)
    mask[..., 0, :] = 1
    model.batches.clear()
    out = repaint(
        den, x_T, known, mask, steps=20, jump_length=5, resample=3, generator=gens, cond=cond
    )
    torch.testing.assert_close(out[..., 1:, :], known[..., 1:, :], rtol=0, atol=1e-6)
    from denoisekit.engine.repaint import num_evaluations

    assert len(model.batches) == num_evaluations(20, 5, 3)
