"""Training with ``[inpainting]`` (the masked image and the mask as input channels) and
editing with such a model: the mask draw, the channels, the recipe check, exact resume,
and ``edit`` keeping the known pixels."""

from __future__ import annotations

import attrs
import numpy as np
import pytest
import torch

from denoisekit import hookimpl
from denoisekit.cli import main
from denoisekit.engine.build import build_run
from denoisekit.engine.editing import EditOptions, edit_images
from denoisekit.engine.inpainting import ConditionedModel
from denoisekit.engine.loop import train
from denoisekit.engine.masks import MASK_KINDS, conditioning, draw_masks, make_mask
from denoisekit.host.recipe import load_recipe
from denoisekit.testing import train_tiny, write_recipe

INPAINTING = {
    "backbone": {"in_channels": 3, "out_channels": 1},
    "inpainting": {"masks": list(MASK_KINDS), "p_all_unknown": 0.25},
}


class Inputs:
    """Records what the backbone receives in training."""

    def __init__(self):
        self.seen = []

    @hookimpl(tryfirst=True)
    def denoisekit_train_forward(self, x_t):
        self.seen.append(x_t.detach().clone())


def test_masks_cover_what_they_say():
    top, left, centre = (make_mask(k, 1, 8) for k in ("top", "left", "centre"))
    assert top[0, 0, :4].eq(1).all() and top[0, 0, 4:].eq(0).all()
    assert left[0, 0, :, :4].eq(1).all() and left[0, 0, :, 4:].eq(0).all()
    assert centre.sum() == 16 and centre[0, 0, 2:6, 2:6].eq(1).all()
    pixels = make_mask("pixels", 200, 8)
    assert abs(float(pixels.mean()) - 0.5) < 0.02
    boxes = make_mask("boxes", 400, 8)
    assert bool((boxes.flatten(1).sum(1) >= 4).all()) and float(boxes.mean()) < 0.5
    # every side from 2 to 4 and every position occurs: a lone box's bounding box
    assert bool((boxes.amax(dim=(1, 2)).sum(-1) == 8).any())  # some image's boxes span a row
    assert bool(boxes[:, 0, 0, 0].any() and boxes[:, 0, 7, 7].any())  # corners are reachable


def test_the_draw_is_deterministic_per_seed_and_mixes_the_shapes():
    def draw(seed, p=0.0):
        return draw_masks(MASK_KINDS, 500, 8, torch.Generator().manual_seed(seed), p)

    assert torch.equal(draw(3), draw(3)) and not torch.equal(draw(3), draw(4))
    masks = draw(0)
    top = masks[:, 0, :4].eq(1).flatten(1).all(1) & masks[:, 0, 4:].eq(0).flatten(1).all(1)
    assert 0.1 < float(top.float().mean()) < 0.3  # one shape in five
    everything = draw(0, p=1.0)
    assert everything.eq(1).all()
    assert 0.2 < float(draw(0, p=0.5).flatten(1).all(1).float().mean()) < 0.8


def test_the_conditioning_hides_what_is_regenerated():
    images = torch.randn(2, 1, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    extra = conditioning(images, mask)
    assert extra.shape == (2, 2, 4, 4)
    assert extra[:, 0, :2].eq(0).all() and torch.equal(extra[:, 0, 2:], images[:, 0, 2:])
    assert torch.equal(extra[:, 1:], mask.expand(2, 1, 4, 4))


def test_the_backbone_gets_x_t_the_masked_image_and_the_mask(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, INPAINTING))
    inputs = Inputs()
    run = build_run(recipe, out_dir=tmp_path / "run", extra_hooks=[inputs])
    train(run)
    assert len(inputs.seen) == 2 and inputs.seen[0].shape == (8, 3, 8, 8)
    x = torch.cat(inputs.seen)
    mask = x[:, 2:]
    assert bool(((mask == 0) | (mask == 1)).all())
    assert bool((x[:, 1:2] * mask).eq(0).all())  # the regenerated pixels are hidden
    assert bool((x[:, 1:2] * (1 - mask)).ne(0).any())  # the kept ones are shown


def test_the_mask_draw_resumes_exactly(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, {**INPAINTING, "train": {"steps": 4}}))
    straight = Inputs()
    train(build_run(recipe, out_dir=tmp_path / "a", extra_hooks=[straight]))
    first = build_run(recipe, out_dir=tmp_path / "b")
    first = attrs.evolve(
        first, recipe=attrs.evolve(recipe, train=attrs.evolve(recipe.train, steps=2))
    )
    train(first)
    resumed = Inputs()
    second = build_run(recipe, out_dir=tmp_path / "c", extra_hooks=[resumed])
    second.load_state_dict(first.state_dict())
    train(second)
    assert len(resumed.seen) == 2
    assert all(torch.equal(a, b) for a, b in zip(straight.seen[2:], resumed.seen, strict=True))


@pytest.mark.parametrize(
    ("backbone", "key"),
    [({"in_channels": 1, "out_channels": 1}, "in_channels"), ({"in_channels": 3}, "out_channels")],
)
def test_wrong_channels_are_one_line_at_recipe_check(tmp_path, capsys, backbone, key):
    recipe = write_recipe(tmp_path, {**INPAINTING, "backbone": backbone})
    assert main(["recipe", "check", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"backbone.{key}" in err and "[inpainting]" in err and "in_channels = 3" in err


def test_an_unknown_mask_shape_is_refused(tmp_path, capsys):
    recipe = write_recipe(tmp_path, {**INPAINTING, "inpainting": {"masks": ["top", "star"]}})
    assert main(["recipe", "check", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "inpainting.masks" in err and "star" in err, err


def test_the_conditioned_model_passes_the_known_image_and_repeats_it():
    calls = []

    def model(x, time):
        calls.append(x)
        return x[:, :1]

    known = torch.randn(2, 1, 4, 4)
    mask = torch.ones(1, 1, 4, 4)
    mask[..., 2:, :] = 0
    x = torch.randn(4, 1, 4, 4)
    wrapped = ConditionedModel(model, known, mask)  # a plain callable is not a Module
    assert torch.equal(wrapped(x, torch.zeros(4)), x)
    assert torch.equal(calls[0][:, 1:], conditioning(known, mask).repeat(2, 1, 1, 1))
    blank = ConditionedModel(model)
    blank(x, torch.zeros(4))
    assert calls[1][:, 1].eq(0).all() and calls[1][:, 2].eq(1).all()
    with pytest.raises(ValueError, match="a batch of 3 for 2 known images"):
        wrapped(x[:3], torch.zeros(3))


def test_smoke_train_sample_and_edit_keep_the_known_pixels(tmp_path):
    overrides = {**INPAINTING, "train": {"steps": 5}, "hooks": {"checkpoint": {"every": 5}}}
    run = train_tiny(write_recipe(tmp_path, overrides), out_dir=tmp_path / "run")
    assert run.image_shape == (1, 8, 8)
    plain = run.sample(3, generator=torch.Generator().manual_seed(0))
    assert plain.shape == (3, 1, 8, 8) and bool(torch.isfinite(plain).all())

    images = torch.rand(3, 1, 8, 8) * 2 - 1
    mask = make_mask("top", 3, 8)
    out = edit_images(run, images, mask=mask, options=EditOptions())
    keep = mask.eq(0).expand_as(out)
    assert torch.equal(out[keep], images[keep]) and not torch.equal(out, images)

    # through the command line: the model is the default, and --inpaint model says so
    pictures = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "in.npz", pictures)
    top = np.zeros((8, 8))
    top[:4] = 1
    np.save(tmp_path / "top.npy", top)
    for method in ([], ["--inpaint", "model"]):
        out_file = tmp_path / "out.npz"
        args = ["edit", str(run.out_dir), "--input", str(tmp_path / "in.npz")]
        args += ["--mask", str(tmp_path / "top.npy"), "--out", str(out_file), "--overwrite"]
        assert main([*args, *method]) == 0
        with np.load(out_file) as data:
            edited = data["arr_0"]
        assert np.array_equal(edited[:, 4:], pictures[:, 4:])


def test_inpaint_model_on_a_plain_run_is_one_line(tmp_path, capsys):
    hooks = {"hooks": {"checkpoint": {"every": 2}}}
    run = train_tiny(write_recipe(tmp_path, hooks), out_dir=tmp_path / "run")
    np.savez(tmp_path / "in.npz", np.zeros((1, 8, 8, 1), np.uint8))
    np.save(tmp_path / "top.npy", make_mask("top", 1, 8)[0, 0].numpy())
    args = ["edit", str(run.out_dir), "--input", str(tmp_path / "in.npz"), "--inpaint", "model"]
    args += ["--mask", str(tmp_path / "top.npy"), "--out", str(tmp_path / "out.npz")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs a run trained with an [inpainting]" in err, err


def test_the_kept_pixel_guidance_is_cfg_against_the_all_unknown_mask():
    """``scale`` w: ``out(blank) + w (out(known) - out(blank))`` in one batch of 2B; the
    all-unknown conditioning is the one ``p_all_unknown`` trains."""
    calls = []
    weight = torch.randn(1, 3, 1, 1)

    def model(x, time):
        calls.append((x, time))
        return (x * weight).sum(dim=1, keepdim=True) * (1 + time.view(-1, 1, 1, 1))

    known = torch.randn(2, 1, 4, 4)
    mask = make_mask("pixels", 2, 4, seed=1)
    x, time = torch.randn(2, 1, 4, 4), torch.tensor([3.0, 7.0])
    cond = ConditionedModel(model, known, mask)(x, time)
    blank = ConditionedModel(model)(x, time)
    calls.clear()
    guided = ConditionedModel(model, known, mask, scale=2.5)(x, time)
    assert len(calls) == 1 and calls[0][0].shape[0] == 4  # one batch: known, then blank
    torch.testing.assert_close(guided, blank + 2.5 * (cond - blank))
    assert torch.equal(calls[0][1], torch.tensor([3.0, 7.0, 3.0, 7.0]))


def test_the_model_is_the_default_of_an_inpainting_run_with_or_without_repaint(tmp_path):
    overrides = {**INPAINTING, "train": {"steps": 3}, "hooks": {"checkpoint": {"every": 3}}}
    run = train_tiny(write_recipe(tmp_path, overrides), out_dir=tmp_path / "run")
    images = torch.rand(3, 1, 8, 8) * 2 - 1
    mask = make_mask("top", 3, 8)
    for repaint in (None, (5, 2, 2)):

        def edit(repaint=repaint, **options):
            return edit_images(
                run, images, mask=mask, options=EditOptions(repaint=repaint, **options)
            )

        default = edit()
        assert torch.equal(default, edit(method="model"))
        assert not torch.equal(default, edit(method="replacement"))
        assert not torch.equal(default, edit(method="model", scale=2.0))


def test_the_recipes_guidance_is_the_default_scale_of_its_model(tmp_path):
    table = {**INPAINTING["inpainting"], "guidance": 2.0}
    overrides = {**INPAINTING, "inpainting": table, "train": {"steps": 2}}
    run = train_tiny(write_recipe(tmp_path, overrides), out_dir=tmp_path / "run")
    images = torch.rand(2, 1, 8, 8) * 2 - 1
    mask = make_mask("left", 2, 8)

    def edit(**options):
        return edit_images(run, images, mask=mask, options=EditOptions(**options))

    default = edit()
    assert torch.equal(default, edit(method="model", scale=2.0))
    assert not torch.equal(default, edit(method="model", scale=1.0))
