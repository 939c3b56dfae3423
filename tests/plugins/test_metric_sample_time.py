"""The ``sample-time`` metric: seconds and network evaluations per image."""

from __future__ import annotations

import attrs
import pytest
import torch

from denoisekit.engine.build import build_run
from denoisekit.engine.evaluation import EvalContext, SampleSet
from denoisekit.errors import DenoisekitError
from denoisekit.plugins.metrics.sample_time import SampleTimeConfig, SampleTimeMetric
from tests.core.test_evaluation import tiny_recipe


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("sampletime")
    yield build_run(tiny_recipe(folder), out_dir=folder / "run")
    torch.set_num_threads(before)


def test_times_the_shared_sample_set(run) -> None:
    context = EvalContext(run=run, num_samples=6, batch_size=4)
    out = SampleTimeMetric(SampleTimeConfig())(context)
    assert set(out) == {"sec_per_image", "nfe_per_image"}
    assert out["nfe_per_image"] == 3  # DDIM with steps = 3: one evaluation per step
    assert out["sec_per_image"] == pytest.approx(context.samples().seconds / 6)
    assert out["sec_per_image"] > 0


def test_a_separate_timed_draw(run) -> None:
    context = EvalContext(run=run, num_samples=100, batch_size=4)
    out = SampleTimeMetric(SampleTimeConfig(num_images=5, warmup=True))(context)
    assert out["nfe_per_image"] == 3
    assert context.sample_set is None  # the shared set was not drawn


def test_counts_what_the_sampler_really_evaluates(run) -> None:
    """A sampler making two predict calls per step counts twice; one bypassing predict
    falls back to its num_evaluations."""
    inner = run.sampler

    class Twice:
        def num_evaluations(self, T):
            return 99

        def sample(self, denoiser, x_T, **kwargs):
            denoiser.predict(torch.zeros_like(x_T), torch.zeros(x_T.shape[0], dtype=torch.long))
            return inner.sample(denoiser, x_T, **kwargs)

    class Bypass:
        def num_evaluations(self, T):
            return 7

        def sample(self, denoiser, x_T, **kwargs):
            return torch.zeros_like(x_T)

    twice = attrs.evolve(run, sampler=Twice())  # the run record is frozen: a copy
    out = SampleTimeMetric(SampleTimeConfig())(EvalContext(run=twice, num_samples=3))
    assert out["nfe_per_image"] == 4
    bypass = attrs.evolve(run, sampler=Bypass())
    out = SampleTimeMetric(SampleTimeConfig())(EvalContext(run=bypass, num_samples=3))
    assert out["nfe_per_image"] == 7


def test_needs_a_model() -> None:
    context = EvalContext(sample_set=SampleSet(images=torch.zeros(2, 1, 8, 8)))
    with pytest.raises(DenoisekitError, match="needs a trained model"):
        SampleTimeMetric(SampleTimeConfig())(context)
    with pytest.raises(ValueError, match="'num_images' must be a positive integer"):
        SampleTimeConfig(num_images=0)
