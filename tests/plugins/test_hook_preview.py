"""The preview hook: PNG grids from fixed noise, handed to denoisekit_preview_images."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from denoisekit import hookimpl
from denoisekit.engine.loop import train
from denoisekit.plugins.hooks.preview import PreviewConfig, PreviewHook
from tests.plugins.hook_runs import single_thread, tiny_recipe, tiny_run


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    yield from single_thread()


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, torch.Tensor]] = []

    @hookimpl
    def denoisekit_preview_images(self, step, images) -> None:
        self.calls.append((step, images.clone()))


@pytest.fixture(scope="module")
def previewed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("preview")
    hooks = {"preview": {"every": 1, "num_images": 4, "seed": 5}}
    recorder = _Recorder()
    run = tiny_run(folder, tiny_recipe(folder, steps=2, hooks=hooks), extra_hooks=(recorder,))
    train(run)
    return run, recorder


def test_writes_a_png_grid_per_preview(previewed) -> None:
    run, recorder = previewed
    files = sorted(p.name for p in (run.out_dir / "samples").iterdir())
    assert files == ["step-00000001.png", "step-00000002.png"]
    with Image.open(run.out_dir / "samples" / "step-00000002.png") as image:
        # 4 images of 8x8 in a 2x2 grid with make_grid's 2-pixel padding.
        assert image.size == (2 + 2 * (8 + 2), 2 + 2 * (8 + 2))
    # The end of training is step 2, already previewed: no second call.
    assert [step for step, _ in recorder.calls] == [1, 2]
    for _, images in recorder.calls:
        assert images.shape == (4, 1, 8, 8)
        assert images.min() >= -1 and images.max() <= 1


def test_every_preview_starts_from_the_same_noise(previewed) -> None:
    run, recorder = previewed
    hook = run.hooks["preview"]
    # The weights are still those of step 2: redrawing gives the same images...
    assert torch.equal(hook.draw(run), recorder.calls[-1][1])
    # ...which are the sampler's images from x_T ~ N(0, I) drawn with the seed.
    x_T = torch.randn((4, 1, 8, 8), generator=torch.Generator().manual_seed(5))
    assert torch.equal(run.sample(4, generator=torch.Generator(), x_T=x_T), recorder.calls[-1][1])
    # The two previews differ only through the weights (one step apart).
    assert not torch.equal(recorder.calls[0][1], recorder.calls[1][1])


def test_class_conditional_labels_cycle_through_the_classes() -> None:
    seen = {}

    def sample(n, *, generator, cond=None):
        seen.update(n=n, seed=generator.initial_seed(), cond=cond)
        return torch.zeros(n, 1, 8, 8)

    run = SimpleNamespace(num_classes=10, device=torch.device("cpu"), sample=sample, sampler="ddim")
    hook = PreviewHook(PreviewConfig(num_images=25, seed=7))
    hook.draw(run)
    assert seen["n"] == 25 and seen["seed"] == 7
    assert seen["cond"].tolist() == [i % 10 for i in range(25)]
    assert hook.nrow(run) == 10  # one column per class
    run.num_classes = None
    hook.draw(run)
    assert seen["cond"] is None
    assert hook.nrow(run) == 5


def test_bad_options_name_the_field() -> None:
    with pytest.raises(ValueError, match="every"):
        PreviewConfig(every=0)
    with pytest.raises(ValueError, match="num_images"):
        PreviewConfig(num_images=0)
