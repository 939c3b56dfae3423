"""Readable comparison pictures: whole-factor upscaling and one labelled row per variant."""

from __future__ import annotations

import numpy as np
import torch

from denoisekit.engine.figures import PAD, image_row, labelled_rows, scale_for


def test_small_images_are_scaled_by_a_whole_factor_to_the_minimum_cell():
    assert scale_for(8) == 6 and scale_for(32) == 2 and scale_for(64) == 1
    images = torch.linspace(-1, 1, 2 * 8 * 8).view(2, 1, 8, 8)
    strip = image_row(images, 6)
    assert strip.shape == (48, 2 * 48 + PAD, 3)
    # nearest-neighbour: every 6×6 block is one source pixel
    block = strip[:6, :6, 0]
    assert (block == block[0, 0]).all()
    assert strip[0, 0, 0] == 0 and strip[-1, 48 - 1, 0] == round(
        (images[0, 0, -1, -1].item() + 1) * 127.5
    )


def test_each_variant_is_one_labelled_row():
    rows = [("ddim-50", torch.zeros(4, 1, 8, 8)), ("dpmpp-2m-20", -torch.ones(4, 1, 8, 8))]
    picture = labelled_rows(rows)
    assert picture.dtype == np.uint8 and picture.shape[2] == 3
    assert picture.shape[0] == 2 * (48 + PAD) + PAD
    label_width = picture.shape[1] - (4 * 48 + 3 * PAD)
    labels = picture[:, :label_width]
    # text drawn in each row's label cell
    assert (labels[: 48 + PAD] < 128).any() and (labels[48 + PAD :] < 128).any()
    # the second row's images are black (-1), the first row's grey (0)
    assert picture[PAD + 48 + PAD + 10, label_width + 10, 0] == 0
    assert picture[PAD + 10, label_width + 10, 0] == 128
