"""diffusers ``UNet2DModel`` layouts as ``unet`` options (``plugins/backbones/diffusers_*.py``).

Models are randomly initialised and saved with ``save_pretrained`` to a temporary folder
(nothing is downloaded); the conversion reads the folder as a user's would: ``config.json``
and ``diffusion_pytorch_model.safetensors`` through ``safetensors.torch.load_file``.
"""

from __future__ import annotations

import inspect
import json
import math
import re

import attrs
import pytest
import torch

from denoisekit.plugins.backbones.diffusers_layout import (
    UNET2D_DEFAULTS,
    UnsupportedLayoutError,
    diffusers_config_from_unet_options,
    state_dict_from_diffusers,
    state_dict_to_diffusers,
    unet_options_from_diffusers,
)
from denoisekit.plugins.backbones.diffusers_scheduler import (
    prediction_from_scheduler_config,
    schedule_from_scheduler_config,
    scheduler_config_from_schedule,
)
from denoisekit.plugins.backbones.unet import UNet, UNetConfig
from denoisekit.plugins.schedules import cosine, linear

diffusers = pytest.importorskip("diffusers", reason="diffusers (the bench extra) is not installed")
safetensors_torch = pytest.importorskip("safetensors.torch")

#: The google/ddpm-cifar10-32 config.json, as published.
DDPM_CIFAR10 = {
    "_class_name": "UNet2DModel",
    "act_fn": "silu",
    "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
#: The 256×256 layout of google/ddpm-celebahq-256 and the LSUN checkpoints (6 levels).
DDPM_256 = {
    **DDPM_CIFAR10,
    "block_out_channels": [128, 128, 256, 256, 512, 512],
    "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4,
    "sample_size": 256,
}

LAYOUTS = {
    # DDPM CIFAR-10 at a quarter of the width.
    "cifar10-small": {**DDPM_CIFAR10, "block_out_channels": [32, 64, 64, 64], "norm_num_groups": 8},
    # The 256 layout at small width and 64×64 (attention then sits at 4×4).
    "ddpm256-small": {
        **DDPM_256,
        "block_out_channels": [8, 8, 16, 16, 32, 32],
        "norm_num_groups": 4,
        "sample_size": 64,
    },
    # No attention anywhere, and diffusers' own defaults for the other conventions.
    "attention-free": {
        "sample_size": 16,
        "block_out_channels": [16, 32, 32],
        "down_block_types": ["DownBlock2D"] * 3,
        "up_block_types": ["UpBlock2D"] * 3,
        "add_attention": False,
        "norm_num_groups": 8,
        "layers_per_block": 1,
    },
    # Scale-shift embedding, multi-head attention, 1 input channel, 2 outputs, classes.
    "scale-shift-heads": {
        "sample_size": 16,
        "in_channels": 1,
        "out_channels": 2,
        "block_out_channels": [16, 32],
        "down_block_types": ["AttnDownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D"],
        "attention_head_dim": 8,
        "norm_num_groups": 4,
        "resnet_time_scale_shift": "scale_shift",
        "attn_norm_num_groups": 4,
        "num_class_embeds": 4,
    },
}


def save_random_diffusers(config: dict, folder, seed: int = 0):
    """A randomly initialised ``UNet2DModel`` saved as a user's model folder."""
    torch.manual_seed(seed)
    model = diffusers.UNet2DModel(**{k: v for k, v in config.items() if not k.startswith("_")})
    model.save_pretrained(folder, safe_serialization=True)
    return model.eval()


def load_folder(folder) -> tuple[dict, dict]:
    """``config.json`` and the safetensors weights, without diffusers."""
    config = json.loads((folder / "config.json").read_text())
    return config, safetensors_torch.load_file(folder / "diffusion_pytorch_model.safetensors")


def import_folder(folder) -> tuple[UNet, dict]:
    config, weights = load_folder(folder)
    options = unet_options_from_diffusers(config)
    model = UNet(UNetConfig(**options))
    model.load_state_dict(state_dict_from_diffusers(weights, options), strict=True)
    return model.eval(), options


def max_forward_error(ours: UNet, theirs, options: dict, seed: int = 1) -> float:
    g = torch.Generator().manual_seed(seed)
    cfg = UNetConfig(**options)
    x = torch.randn(4, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g)
    t = torch.tensor([0, 1, 500, 999])
    labels = torch.tensor([0, 1, 2, 3]) if cfg.num_classes is not None else None
    with torch.no_grad():
        expected = theirs(x, t, class_labels=labels).sample
        got = ours(x, t, labels)
    assert got.shape == expected.shape
    assert expected.abs().max() > 0.1  # a real signal, not two zero outputs
    return (got - expected).abs().max().item()


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_imported_model_computes_what_diffusers_computes(name, tmp_path):
    theirs = save_random_diffusers(LAYOUTS[name], tmp_path)
    ours, options = import_folder(tmp_path)
    assert sum(p.numel() for p in ours.parameters()) == theirs.num_parameters()
    err = max_forward_error(ours, theirs, options)
    print(f"{name}: max |ours - diffusers| = {err:.2e}")
    assert err < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ddpm-cifar10-32"])
def test_full_width_ddpm_cifar10_computes_what_diffusers_computes(name, tmp_path):
    theirs = save_random_diffusers(DDPM_CIFAR10, tmp_path)
    ours, options = import_folder(tmp_path)
    assert sum(p.numel() for p in ours.parameters()) == 35_746_307
    err = max_forward_error(ours, theirs, options)
    print(f"{name}: max |ours - diffusers| = {err:.2e}")
    assert err < 1e-5


@pytest.mark.parametrize(
    ("overrides", "detail"),
    [
        ({"norm_eps": 0.0}, "'norm_eps' must be a finite number > 0"),
        ({"freq_shift": 2}, "'freq_shift' must be an integer from 0 to 1"),
        ({"flip_sin_to_cos": 1}, "'flip_sin_to_cos' must be <class 'bool'>"),
        ({"downsample_padding": "same"}, "'downsample_padding' must be in"),
        ({"mid_attention": "no"}, "'mid_attention' must be <class 'bool'>"),
    ],
)
def test_diffusers_convention_options_are_checked(overrides, detail):
    with pytest.raises((TypeError, ValueError), match=re.escape(detail)):
        UNetConfig(**overrides)


def test_diffusers_convention_options_change_only_what_they_name():
    tiny = {"channels": 8, "channel_mults": (1, 2), "image_size": 8, "groups": 4,
            "attention_resolutions": (4,), "num_heads": 1, "num_res_blocks": 1}  # fmt: skip
    default = UNet(UNetConfig(**tiny))
    count = sum(p.numel() for p in default.parameters())
    no_mid = UNet(UNetConfig(**tiny, mid_attention=False))
    assert no_mid.mid.attn is None
    assert count - sum(p.numel() for p in no_mid.parameters()) == sum(
        p.numel() for p in default.mid.attn.parameters()
    )
    for options in ({"norm_eps": 1e-6}, {"freq_shift": 0}, {"flip_sin_to_cos": True},
                    {"downsample_padding": "bottom_right"}):  # fmt: skip
        other = UNet(UNetConfig(**tiny, **options))
        assert sum(p.numel() for p in other.parameters()) == count
    t = torch.arange(0, 1000, 7)
    ddpm = default.time_embed(t)
    shifted = UNet(UNetConfig(**tiny, freq_shift=1)).time_embed(t)
    assert (ddpm - shifted).abs().max() < 1e-4  # the same frequencies, rounded differently
    flipped = UNet(UNetConfig(**tiny, flip_sin_to_cos=True)).time_embed(t)
    assert torch.equal(flipped, torch.cat([ddpm[:, 4:], ddpm[:, :4]], dim=1))
    x = torch.randn(2, 8, 4, 4)
    down = UNet(UNetConfig(**tiny, downsample_padding="bottom_right")).down[1]
    expected = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, (0, 1, 0, 1)), down.conv.weight, down.conv.bias, stride=2
    )
    assert down(x).shape == (2, 8, 2, 2) and torch.equal(down(x), expected)


def test_ddpm_checkpoint_layouts_map_to_the_expected_options():
    cifar = unet_options_from_diffusers(DDPM_CIFAR10)
    assert cifar == {
        "in_channels": 3,
        "channels": 128,
        "channel_mults": [1, 2, 2, 2],
        "num_res_blocks": 2,
        "image_size": 32,
        "attention_resolutions": [16],
        "num_heads": 1,
        "dropout": 0.0,
        "groups": 32,
        "embedding": "additive",
        "norm_eps": 1e-6,
        "freq_shift": 1,
        "flip_sin_to_cos": False,
        "downsample_padding": "bottom_right",
        "mid_attention": True,
    }
    big = unet_options_from_diffusers(DDPM_256)
    assert big["channel_mults"] == [1, 1, 2, 2, 4, 4]
    assert big["attention_resolutions"] == [16]
    assert big["image_size"] == 256


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_options_and_config_round_trip(name):
    options = unet_options_from_diffusers(LAYOUTS[name])
    config = diffusers_config_from_unet_options(options)
    assert unet_options_from_diffusers(config) == options
    mapped = {**UNET2D_DEFAULTS, **{k: v for k, v in LAYOUTS[name].items() if k[0] != "_"}}
    if not config["add_attention"] and "AttnDownBlock2D" not in config["down_block_types"]:
        del config["attention_head_dim"]  # no attention: the head width means nothing
    for key, value in config.items():
        if key[0] != "_":
            want = mapped[key]
            assert value == (list(want) if isinstance(want, tuple) else want), key


def test_our_model_exports_to_diffusers_and_back_exactly(tmp_path):
    options = {
        "channels": 16,
        "channel_mults": (1, 2, 2),
        "num_res_blocks": 2,
        "image_size": 16,
        "attention_resolutions": (8,),
        "num_heads": 2,
        "groups": 8,
        "dropout": 0.0,
        "embedding": "scale_shift",
        "num_classes": 3,
    }
    torch.manual_seed(0)
    ours = UNet(UNetConfig(**options)).eval()
    with torch.no_grad():  # the zero-initialised convs get values, so outputs are not 0
        for p in ours.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    # A folder as an exporter writes it, loaded by diffusers offline.
    config = diffusers_config_from_unet_options(options)
    (tmp_path / "config.json").write_text(json.dumps(config))
    weights = state_dict_to_diffusers(ours.state_dict(), options)
    safetensors_torch.save_file(weights, tmp_path / "diffusion_pytorch_model.safetensors")
    theirs = diffusers.UNet2DModel.from_pretrained(tmp_path, local_files_only=True).eval()
    assert theirs.state_dict().keys() == weights.keys()
    # Our default frequencies are DDPM's formula, diffusers' freq_shift = 1 up to float32
    # rounding: equal outputs need the same rounding, as an imported model has.
    same = UNet(UNetConfig(**{**options, "freq_shift": 1})).eval()
    same.load_state_dict(ours.state_dict())
    err = max_forward_error(same, theirs, options)
    print(f"export: max |ours - diffusers| = {err:.2e}")
    assert err < 1e-5
    back = state_dict_from_diffusers(theirs.state_dict(), options)
    assert back.keys() == ours.state_dict().keys()
    for key, value in ours.state_dict().items():
        assert torch.equal(back[key], value), key


def test_legacy_attention_weight_names_are_read(tmp_path):
    theirs = save_random_diffusers(LAYOUTS["cifar10-small"], tmp_path)
    config, weights = load_folder(tmp_path)
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {}
    for key, value in weights.items():
        for new, name in legacy.items():
            key = key.replace(f".{new}.", f".{name}.")
        old[key] = value
    assert any(".proj_attn." in k for k in old)
    options = unet_options_from_diffusers(config)
    ours = UNet(UNetConfig(**options)).eval()
    ours.load_state_dict(state_dict_from_diffusers(old, options), strict=True)
    assert max_forward_error(ours, theirs, options) < 1e-5


def test_defaults_are_diffusers_defaults():
    params = inspect.signature(diffusers.UNet2DModel.__init__).parameters
    assert {k: p.default for k, p in params.items() if k != "self"} == UNET2D_DEFAULTS


@pytest.mark.parametrize(
    ("change", "line"),
    [
        (
            {"up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"]},
            "up_block_types[1] = 'CrossAttnUpBlock2D' is not supported "
            "(only UpBlock2D and AttnUpBlock2D)",
        ),
        (
            {"down_block_types": ["DownBlock2D"] * 4},
            "up_block_types[2] = 'AttnUpBlock2D' is not supported with down_block_types[1] = "
            "'DownBlock2D' (the unet has attention at the same levels on both sides)",
        ),
        ({"mid_block_type": None}, "mid_block_type = None is not supported"),
        ({"sample_size": None}, "sample_size = None is not supported"),
        ({"block_out_channels": [128, 192, 256, 256]}, "block_out_channels[1] = 192"),
        ({"time_embedding_type": "fourier"}, "time_embedding_type = 'fourier' is not supported"),
        ({"_class_name": "UNet2DConditionModel"}, "_class_name = 'UNet2DConditionModel'"),
        ({"cross_attention_dim": 768}, "cross_attention_dim = 768 is not supported"),
        ({"attention_head_dim": 48}, "attention_head_dim = 48 is not supported (it must divide"),
    ],
)
def test_unsupported_configs_fail_in_one_line_naming_the_field(change, line):
    with pytest.raises(UnsupportedLayoutError) as info:
        unet_options_from_diffusers({**DDPM_CIFAR10, **change})
    message = str(info.value)
    assert "\n" not in message
    assert line in message


@pytest.mark.parametrize(
    ("options", "line"),
    [
        ({"time_input": "log_snr"}, "time_input = 'log_snr' is not supported"),
        ({"resample_with_conv": False}, "resample_with_conv = False is not supported"),
        ({"channel_mults": (2, 2)}, "channel_mults[0] = 2 is not supported"),
        ({"num_heads": 4, "channel_mults": (1, 2, 4)}, "num_heads = 4 is not supported"),
    ],
)
def test_unet_options_without_a_diffusers_layout_fail_naming_them(options, line):
    with pytest.raises(UnsupportedLayoutError, match=r"^[^\n]*$") as info:
        diffusers_config_from_unet_options(options)
    assert line in str(info.value)


def test_weights_of_another_layout_are_refused():
    options = unet_options_from_diffusers(LAYOUTS["cifar10-small"])
    with pytest.raises(UnsupportedLayoutError, match="1 diffusers weights do not belong"):
        state_dict_from_diffusers({"extra.weight": torch.zeros(1)}, options)


# --------------------------------------------------------------------------- schedules


def build_schedule(table: dict):
    """Our schedule from a table, whatever its T key is called on this branch."""
    module = {"linear": linear, "cosine": cosine}[table["type"]]
    config_cls = {"linear": linear.LinearScheduleConfig, "cosine": cosine.CosineScheduleConfig}
    config_cls = config_cls[table["type"]]
    fields = attrs.fields_dict(config_cls)
    kwargs = {k: v for k, v in table.items() if k != "type"}
    if "num_timesteps" not in fields:
        kwargs["timesteps"] = kwargs.pop("num_timesteps")
    build = module.build_linear if table["type"] == "linear" else module.build_cosine
    return build(config_cls(**kwargs))


def diffusers_float64_alphas_cumprod(config: dict) -> torch.Tensor:
    """diffusers' DDPMScheduler betas definition evaluated in float64 (it builds in float32)."""
    steps = config["num_train_timesteps"]
    if config["beta_schedule"] == "linear":
        betas = torch.linspace(config["beta_start"], config["beta_end"], steps, dtype=torch.float64)
    else:

        def f(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor(
            [min(1 - f((i + 1) / steps) / f(i / steps), 0.999) for i in range(steps)],
            dtype=torch.float64,
        )
    return torch.cumprod(1.0 - betas, dim=0)


SCHEDULER_CONFIGS = {
    "linear": {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
    "linear-T500": {
        "beta_schedule": "linear",
        "beta_start": 2e-4,
        "beta_end": 0.04,
        "num_train_timesteps": 500,
    },
    "squaredcos_cap_v2": {"beta_schedule": "squaredcos_cap_v2"},
    "squaredcos_cap_v2-T4000": {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 4000},
}


@pytest.mark.parametrize("name", list(SCHEDULER_CONFIGS))
def test_scheduler_configs_give_diffusers_alphas_cumprod(name):
    config = {"_class_name": "DDPMScheduler", **SCHEDULER_CONFIGS[name]}
    theirs = diffusers.DDPMScheduler.from_config(config)
    config = {"num_train_timesteps": 1000, **config}
    ours = build_schedule(schedule_from_scheduler_config(config))
    # diffusers builds in float32: betas and alphas_cumprod agree to float32 rounding, and
    # exactly (1e-12) with diffusers' definition evaluated in float64.
    beta_err = (ours.betas - theirs.betas.double()).abs().max().item()
    f32_err = (ours.alphas_cumprod - theirs.alphas_cumprod.double()).abs().max().item()
    f64_err = (ours.alphas_cumprod - diffusers_float64_alphas_cumprod(config)).abs().max().item()
    print(
        f"{name}: betas {beta_err:.1e}, alphas_cumprod vs diffusers (float32) {f32_err:.1e}, "
        f"vs its definition in float64 {f64_err:.1e}"
    )
    assert torch.allclose(ours.betas, theirs.betas.double(), rtol=2**-23, atol=0)  # 1 ulp
    assert f32_err < 1e-6
    assert f64_err < 1e-12
    # ... and the export gives diffusers the same betas back.
    exported = scheduler_config_from_schedule(schedule_from_scheduler_config(config))
    again = diffusers.DDIMScheduler.from_config({**exported, "_class_name": "DDIMScheduler"})
    assert torch.equal(again.betas, theirs.betas)


def test_scheduler_configs_that_do_not_map_fail_naming_the_field():
    with pytest.raises(UnsupportedLayoutError, match=r"^beta_schedule = 'scaled_linear'"):
        schedule_from_scheduler_config({"beta_schedule": "scaled_linear"})
    with pytest.raises(UnsupportedLayoutError, match=r"^trained_betas"):
        schedule_from_scheduler_config({"trained_betas": [0.1, 0.2]})
    with pytest.raises(UnsupportedLayoutError, match=r"^schedule s = 0.01"):
        scheduler_config_from_schedule({"type": "cosine", "num_timesteps": 1000, "s": 0.01})
    assert prediction_from_scheduler_config({"prediction_type": "v_prediction"}) == "v"
    assert prediction_from_scheduler_config({}) == "eps"
    with pytest.raises(UnsupportedLayoutError, match=r"^prediction_type = 'flow'"):
        prediction_from_scheduler_config({"prediction_type": "flow"})
