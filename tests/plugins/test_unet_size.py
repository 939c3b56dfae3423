"""The unet's size from its config alone (:func:`unet_size`), against the network itself:
the parameter count exactly, the activations as a lower bound of what autograd keeps."""

from __future__ import annotations

import pytest
import torch

from denoisekit.plugins.backbones.unet_config import UNetConfig, largest_size_key, unet_size
from denoisekit.plugins.backbones.unet_network import UNet

TINY = {"in_channels": 1, "image_size": 8, "channels": 8, "channel_mults": (1, 2)}
CONFIGS = {
    "tiny": {**TINY, "attention_resolutions": (4,), "groups": 4, "num_res_blocks": 1},
    "ddpm-cifar10": {},
    "every-option": {
        "embedding": "scale_shift",
        "num_classes": 10,
        "resample_with_conv": False,
        "mid_attention": False,
        "channel_mults": (1, 2, 3),
        "image_size": 16,
        "attention_resolutions": (16, 8),
        "num_res_blocks": 3,
        "out_channels": 6,
        "channels": 32,
        "head_channels": 8,
    },
    "no-attention": {**TINY, "attention_resolutions": (), "groups": 2, "num_res_blocks": 2},
}


def saved_floats(model: UNet, config: UNetConfig, batch: int) -> int:
    """Floats autograd keeps for the backward of one forward of ``batch`` images."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel()
        return tensor

    x = torch.zeros(batch, config.in_channels, config.image_size, config.image_size)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x, torch.zeros(batch, dtype=torch.long))
    return total


@pytest.mark.parametrize("name", CONFIGS)
def test_parameters_exactly_and_activations_at_least_half_of_what_autograd_keeps(name):
    config = UNetConfig(**{"dropout": 0.0, **CONFIGS[name]})
    model = UNet(config)
    parameters, activations = unet_size(config)
    assert parameters == sum(p.numel() for p in model.parameters())
    per_image = saved_floats(model, config, 2) - saved_floats(model, config, 1)  # weights cancel
    assert per_image / 2 <= activations <= per_image


def test_an_absurd_num_res_blocks_costs_no_time():
    """Blocks alike are counted with a multiplicity: 10**12 blocks is one multiplication."""
    config = UNetConfig(**{**CONFIGS["tiny"], "num_res_blocks": 10**12})
    small = unet_size(UNetConfig(**{**CONFIGS["tiny"], "num_res_blocks": 2}))[0]
    smaller = unet_size(UNetConfig(**{**CONFIGS["tiny"], "num_res_blocks": 1}))[0]
    assert unet_size(config)[0] == smaller + (10**12 - 1) * (small - smaller)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"channels": 10**9}, "channels"),
        ({"channel_mults": (1, 2, 10**8)}, "channel_mults[2]"),
        ({"num_res_blocks": 10**8}, "num_res_blocks"),
    ],
)
def test_the_option_to_blame_is_the_one_far_beyond_published_models(options, key):
    config = UNetConfig(**{**CONFIGS["tiny"], "attention_resolutions": (), **options})
    assert largest_size_key(config, 0) == key
