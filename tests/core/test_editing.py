"""img2img and inpainting (engine/editing.py): closed cases and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from denoisekit.denoiser import Denoiser
from denoisekit.engine.editing import (
    EditOptions,
    edit_batch,
    load_inputs,
    load_mask,
    start_timestep,
)
from denoisekit.errors import DataError
from denoisekit.plugins.samplers.dpmpp_2m import DPMSolverConfig, DPMSolverSampler
from tests.core.test_steering import ToyConditional
from tests.plugins.sampler_oracles import cos_sched

SHAPE = (1, 4, 4)


@pytest.fixture
def parts():
    torch.manual_seed(0)
    den = Denoiser(ToyConditional(), cos_sched(1000))
    images = torch.rand(3, *SHAPE) * 2 - 1
    x_T = torch.randn(3, *SHAPE)
    return den, DPMSolverSampler(DPMSolverConfig(steps=10)), images, x_T


def run(parts, **kw):
    den, sampler, images, x_T = parts
    mask = kw.pop("mask", None)
    return edit_batch(
        den,
        sampler,
        images,
        x_T,
        mask=mask,
        options=EditOptions(**kw),
        generator=None,
        cond=torch.tensor([0, 1, 2]),
    )


def test_strength_zero_returns_the_input(parts):
    assert torch.equal(run(parts, strength=0.0), parts[2])


def test_strength_one_is_plain_sampling(parts):
    den, sampler, _, x_T = parts
    plain = sampler.sample(den, x_T, cond=torch.tensor([0, 1, 2]))
    assert torch.equal(run(parts, strength=1.0), plain)


def test_low_strength_stays_near_the_input_and_high_strength_moves_away(parts):
    images = parts[2]
    near = (run(parts, strength=0.1) - images).abs().mean()
    far = (run(parts, strength=0.9) - images).abs().mean()
    assert near < far


def test_strength_picks_the_start_timestep():
    assert start_timestep(0.0, 1000) == -1
    assert start_timestep(0.3, 1000) == 299
    assert start_timestep(1.0, 1000) == 999
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(DataError, match="outside"):
            start_timestep(bad, 1000)


@pytest.mark.parametrize("repaint", [None, (10, 2, 2)])
def test_an_all_known_mask_returns_the_input(parts, repaint):
    out = run(parts, mask=torch.zeros(1, 1, 4, 4), repaint=repaint)
    torch.testing.assert_close(out, parts[2], rtol=0, atol=1e-6)


def test_inputs_from_files_folders_and_npz(tmp_path):
    array = (np.arange(2 * 4 * 4).reshape(2, 4, 4, 1) * 7 % 256).astype(np.uint8)
    np.savez(tmp_path / "in.npz", array)
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(array[i, :, :, 0]).save(folder / f"{i}.png")
    from_npz = load_inputs([tmp_path / "in.npz"], SHAPE)
    from_folder = load_inputs([folder], SHAPE)
    from_file = load_inputs([folder / "1.png"], SHAPE)
    assert from_npz.shape == (2, *SHAPE) and torch.equal(from_npz, from_folder)
    assert torch.equal(from_file, from_npz[1:])
    with pytest.raises(DataError, match="model makes"):
        load_inputs([tmp_path / "in.npz"], (1, 8, 8))


def test_masks_from_images_and_arrays_and_their_errors(tmp_path):
    picture = np.zeros((4, 4), np.uint8)
    picture[:2] = 255  # white top half: regenerate
    Image.fromarray(picture).save(tmp_path / "mask.png")
    mask = load_mask(tmp_path / "mask.png", 3, SHAPE)
    assert mask.shape == (1, 1, 4, 4) and mask[0, 0, :2].eq(1).all() and mask[0, 0, 2:].eq(0).all()
    np.save(tmp_path / "mask.npy", np.ones((3, 4, 4)))
    assert load_mask(tmp_path / "mask.npy", 3, SHAPE).shape == (3, 1, 4, 4)
    np.save(tmp_path / "wrong.npy", np.ones((5, 5)))
    with pytest.raises(DataError, match="does not fit"):
        load_mask(tmp_path / "wrong.npy", 3, SHAPE)
    np.save(tmp_path / "grey.npy", np.full((4, 4), 0.5))
    with pytest.raises(DataError, match="0 \\(keep\\) or 1"):
        load_mask(tmp_path / "grey.npy", 3, SHAPE)
