"""Did-you-mean: transpositions are one edit; unrelated words get no suggestion."""

from __future__ import annotations

import pytest

from denoisekit.contracts import KINDS
from denoisekit.host.suggest import closest, did_you_mean, edit_distance

METRICS = ["digits-quality", "fd", "nll", "sample-time"]
UNET_OPTIONS = ["in_channels", "out_channels", "channels", "channel_mults", "dropout"]
HOOKS = ["denoisekit_train_start", "denoisekit_train_end", "denoisekit_train_step_end"]


@pytest.mark.parametrize(
    ("word", "candidates", "expected"),
    [
        ("ddmi", ["ddim", "ddpm"], "ddim"),  # a transposition: one edit (ddpm is two)
        ("ddmi", ["ddpm", "ddim"], "ddim"),  # whatever the order
        ("chanels", UNET_OPTIONS, "channels"),
        ("uent", ["unet"], "unet"),
        ("unet", ["uent"], "uent"),
        ("toysampelr", ["toysampler", "toysampler2"], "toysampler"),
        ("samplers", KINDS, "sampler"),
        ("sed", ["name", "seed", "plugins"], "seed"),
        ("digitz", ["digits", "image-folder", "torchvision"], "digits"),
        ("sample_time", METRICS, "sample-time"),
        ("DDIM", ["ddim", "ddpm"], "ddim"),  # case is ignored
        ("denoisekit_train_stat", HOOKS, "denoisekit_train_start"),
        ("foo", ["ddim", "ddpm"], None),
        ("nosuch", METRICS, None),
        ("zzzz", ["unet"], None),
        ("x", ["v"], None),  # a one-letter rewrite is no suggestion
        ("anything", [], None),
    ],
)
def test_closest(word, candidates, expected):
    assert closest(word, candidates) == expected
    assert did_you_mean(word, candidates) == (f" (did you mean {expected!r}?)" if expected else "")


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [
        ("", "", 0),
        ("abc", "", 3),
        ("", "abc", 3),
        ("ddim", "ddim", 0),
        ("ddmi", "ddim", 1),
        ("ddmi", "ddpm", 2),
        ("ab", "ba", 1),
        ("abcd", "badc", 2),  # two separate transpositions
        ("ca", "abc", 3),  # optimal string alignment: no edit of a transposed pair
        ("kitten", "sitting", 3),
        ("chanels", "channels", 1),
        ("Unet", "unet", 1),  # edit_distance itself is case-sensitive
    ],
)
def test_edit_distance(a, b, distance):
    assert edit_distance(a, b) == distance
    assert edit_distance(b, a) == distance
