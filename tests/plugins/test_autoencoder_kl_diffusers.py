"""diffusers ``AutoencoderKL`` ↔ the ``kl`` autoencoder (``plugins/autoencoders/diffusers_kl.py``).

Models are randomly initialised (nothing is downloaded) and saved with ``save_pretrained``;
the conversion reads the folder as a user's would (``config.json`` and the safetensors
weights). Outputs are compared with diffusers' own forward passes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import denoisekit
from denoisekit.plugins.autoencoders.diffusers_kl import (
    AUTOENCODER_KL_DEFAULTS,
    DIFFUSERS,
    diffusers_config_from_kl,
    shift_scale_from_diffusers,
)
from denoisekit.plugins.autoencoders.kl import KLAutoencoder, KLConfig
from denoisekit.plugins.backbones.diffusers_layout import UnsupportedLayoutError
from denoisekit.testing.conformance import single_thread

diffusers = pytest.importorskip("diffusers", reason="diffusers (the bench extra) is not installed")
safetensors_torch = pytest.importorskip("safetensors.torch")

SMALL = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [8, 16, 16],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 4,
}
VARIANTS = {
    "small": {},
    "no-attention-no-quant": {"mid_block_add_attention": False, "use_quant_conv": False,
                              "use_post_quant_conv": False, "layers_per_block": 1},
    "factor-1-grey": {"in_channels": 1, "out_channels": 1, "block_out_channels": [8],
                      "down_block_types": ["DownEncoderBlock2D"],
                      "up_block_types": ["UpDecoderBlock2D"], "latent_channels": 2},
}  # fmt: skip


def _theirs(config: dict, seed: int = 0):
    torch.manual_seed(seed)
    model = diffusers.AutoencoderKL(**config).eval()
    with torch.no_grad():  # randomise the GroupNorm affines too, so nothing is the identity
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _read_folder(model, folder):
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    weights = safetensors_torch.load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    return config, weights


def _ours(tables, state) -> KLAutoencoder:
    table = tables["autoencoder"]
    options = {k: v for k, v in table.items() if k != "type"}
    model = denoisekit.build("autoencoder", table["type"], **options)
    model.load_state_dict(state)
    return model.eval()


@pytest.mark.parametrize("variant", VARIANTS)
def test_diffusers_weights_give_the_same_posterior_and_decoding(variant, tmp_path):
    theirs = _theirs({**SMALL, **VARIANTS[variant]})
    config, weights = _read_folder(theirs, tmp_path)
    tables, state = DIFFUSERS.import_model(config, weights)
    ours = _ours(tables, state)
    c = theirs.config.in_channels
    x = torch.rand(2, c, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with single_thread(), torch.no_grad():
        expected = theirs.encode(x).latent_dist
        got = ours.encode(x)
        torch.testing.assert_close(got.mean, expected.mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(got.logvar, expected.logvar, rtol=0, atol=1e-5)
        z = expected.sample(torch.Generator().manual_seed(2))
        torch.testing.assert_close(ours.decode(z), theirs.decode(z).sample, rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_export_loads_into_diffusers_strictly_and_round_trips(variant, tmp_path):
    theirs = _theirs({**SMALL, **VARIANTS[variant]})
    config, weights = _read_folder(theirs, tmp_path)
    tables, state = DIFFUSERS.import_model(config, weights)
    ours = _ours(tables, state)
    table = {"type": "kl", **tables["autoencoder"]}
    out_config, out_weights = DIFFUSERS.export_model(table, ours.state_dict())
    init = {k: v for k, v in out_config.items() if not k.startswith("_")}
    back = diffusers.AutoencoderKL(**init).eval()
    back.load_state_dict(out_weights, strict=True)  # every key, every shape
    x = torch.rand(1, theirs.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(3))
    with single_thread(), torch.no_grad():
        torch.testing.assert_close(back(x).sample, theirs(x).sample, rtol=0, atol=1e-5)
    # ... and in again: the same kl options, weights and shift/scale.
    tables2, state2 = DIFFUSERS.import_model(out_config, out_weights)
    assert tables2 == tables
    assert state2.keys() == state.keys()
    assert all(torch.equal(state2[k], state[k]) for k in state)


def test_the_default_kl_f4_has_the_diffusers_layout_of_that_config():
    config = {**AUTOENCODER_KL_DEFAULTS, "block_out_channels": [128, 256, 512],
              "down_block_types": ["DownEncoderBlock2D"] * 3,
              "up_block_types": ["UpDecoderBlock2D"] * 3, "layers_per_block": 2,
              "latent_channels": 3}  # fmt: skip
    with torch.device("meta"):
        theirs = diffusers.AutoencoderKL(**config)
        ours = KLAutoencoder(KLConfig())
    shapes = {k: v.shape for k, v in ours.state_dict().items() if k not in ("shift", "scale")}
    assert shapes == {k: v.shape for k, v in theirs.state_dict().items()}


def test_shift_and_scale_from_scaling_shift_factors_and_latents_mean_std():
    shift, scale = shift_scale_from_diffusers({"scaling_factor": 0.18215}, 4)
    assert torch.equal(shift, torch.zeros(4)) and torch.equal(scale, torch.full((4,), 0.18215))
    flux = {"scaling_factor": 0.3611, "shift_factor": 0.1159}  # FLUX.1's VAE
    shift, scale = shift_scale_from_diffusers(flux, 2)
    assert torch.equal(shift, torch.full((2,), 0.1159))
    assert torch.equal(scale, torch.full((2,), 0.3611))
    per_channel = {"scaling_factor": 0.5, "latents_mean": [1.0, -1.0], "latents_std": [2.0, 4.0]}
    shift, scale = shift_scale_from_diffusers(per_channel, 2)
    # diffusers: (z - latents_mean) * scaling_factor / latents_std.
    assert shift.tolist() == [1.0, -1.0] and scale.tolist() == [0.25, 0.125]
    with pytest.raises(UnsupportedLayoutError, match=r"latents_mean .* 3 values needed"):
        shift_scale_from_diffusers(per_channel, 3)


def test_export_writes_shared_factors_or_per_channel_statistics():
    options = {
        "in_channels": 3, "block_channels": [8], "num_res_blocks": 1, "latent_channels": 2,
        "groups": 4, "mid_attention": True, "quant_conv": True, "post_quant_conv": True,
    }  # fmt: skip
    shared = diffusers_config_from_kl(options, [0.0, 0.0], [0.18215, 0.18215])
    assert shared["scaling_factor"] == pytest.approx(0.18215) and shared["shift_factor"] is None
    assert shared["latents_mean"] is None and shared["latents_std"] is None
    per_channel = diffusers_config_from_kl(options, [0.5, -0.5], [2.0, 4.0])
    assert per_channel["scaling_factor"] == 1.0
    assert per_channel["latents_mean"] == [0.5, -0.5] and per_channel["latents_std"] == [0.5, 0.25]
    for config, expected in ((shared, ([0.0, 0.0], [0.18215] * 2)),
                             (per_channel, ([0.5, -0.5], [2.0, 4.0]))):  # fmt: skip
        shift, scale = shift_scale_from_diffusers(config, 2)  # in again: the same values
        torch.testing.assert_close(shift, torch.tensor(expected[0]))
        torch.testing.assert_close(scale, torch.tensor(expected[1]))
    assert diffusers.AutoencoderKL.from_config(per_channel).config.latents_std == [0.5, 0.25]


def test_older_attention_names_are_renamed(tmp_path):
    theirs = _theirs(SMALL)
    config, weights = _read_folder(theirs, tmp_path)
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for key, value in weights.items():
        for new, former in old.items():
            key = key.replace(f".attentions.0.{new}.", f".attentions.0.{former}.")
        renamed[key] = value
    assert any(".query." in k for k in renamed)
    _, state = DIFFUSERS.import_model(config, renamed)
    _, expected = DIFFUSERS.import_model(config, weights)
    assert state.keys() == expected.keys()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D",
                               "DownEncoderBlock2D"]},
         r"down_block_types\[1\] = 'AttnDownEncoderBlock2D' is not supported"),
        ({"up_block_types": ["UpDecoderBlock2D"]}, "up_block_types .* one per block_out_channels"),
        ({"act_fn": "gelu"}, "act_fn = 'gelu' is not supported"),
        ({"out_channels": 1}, "out_channels = 1 is not supported"),
    ],
)  # fmt: skip
def test_unsupported_configs_are_one_line_naming_the_field(change, message):
    with pytest.raises(UnsupportedLayoutError, match=message):
        DIFFUSERS.import_model({**SMALL, **change}, {})


def test_weights_that_do_not_fit_the_config_are_named(tmp_path):
    config, weights = _read_folder(_theirs(SMALL), tmp_path)
    missing = {k: v for k, v in weights.items() if k != "quant_conv.bias"}
    with pytest.raises(UnsupportedLayoutError, match=r"missing quant_conv\.bias"):
        DIFFUSERS.import_model(config, missing)
    with pytest.raises(UnsupportedLayoutError, match=r"unexpected extra\.weight"):
        DIFFUSERS.import_model(config, {**weights, "extra.weight": torch.zeros(1)})
    wrong = {**weights, "encoder.conv_in.bias": torch.zeros(9)}
    with pytest.raises(UnsupportedLayoutError, match=r"misshapen encoder\.conv_in\.bias"):
        DIFFUSERS.import_model(config, wrong)


def test_the_latent_guide_example_runs(tmp_path, monkeypatch):
    text = (Path(__file__).parents[2] / "docs" / "latent.md").read_text(encoding="utf-8")
    [block] = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "my-vae" in b]
    _theirs(SMALL).save_pretrained(tmp_path / "my-vae")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with single_thread():
        exec(compile(block, "docs/latent.md", "exec"), namespace)
    assert namespace["back"].shape == (4, 3, 32, 32)
    assert namespace["z"].shape == (4, 4, 8, 8)
    assert namespace["config_out"]["block_out_channels"] == [8, 16, 16]
