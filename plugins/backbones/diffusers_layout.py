"""diffusers' ``UNet2DModel`` and scheduler configs as ``unet`` options, weights and schedules.

Pure functions on dicts and tensors (no diffusers import, no file access): a caller reads a
model folder's ``config.json`` and ``diffusion_pytorch_model.safetensors`` itself.

- :func:`unet_options_from_diffusers` / :func:`diffusers_config_from_unet_options`: a
  ``UNet2DModel`` config ↔ ``unet`` backbone options (no ``None`` values: TOML has none).
- :func:`state_dict_from_diffusers` / :func:`state_dict_to_diffusers`: the weights, exact
  (names, and the attention's ``to_q/to_k/to_v`` Linears ↔ one 1×1 ``qkv`` conv).
- :func:`schedule_from_scheduler_config` / :func:`scheduler_config_from_schedule`: a
  ``DDPMScheduler``/``DDIMScheduler`` config ↔ a ``linear``/``cosine`` schedule table.

What cannot be expressed raises :class:`UnsupportedLayoutError`, one line naming the field.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from denoisekit.errors import DenoisekitError
from denoisekit.plugins.backbones.unet_config import UNetConfig, weights_over_memory


class UnsupportedLayoutError(DenoisekitError, ValueError):
    """A diffusers config (or ``unet`` options) that the other side cannot express."""


#: ``UNet2DModel.__init__`` defaults (diffusers 0.30-0.42), for keys a config.json omits.
UNET2D_DEFAULTS: dict[str, Any] = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896),
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "num_train_timesteps": None,
}

#: Fields that must hold one of these values (anything else has no ``unet`` counterpart).
_FIXED: dict[str, tuple[Any, ...]] = {
    "center_input_sample": (False,),
    "time_embedding_type": ("positional",),
    "mid_block_type": ("UNetMidBlock2D",),
    "mid_block_scale_factor": (1,),
    "downsample_type": ("conv",),
    "upsample_type": ("conv",),
    "act_fn": ("silu", "swish"),
    "class_embed_type": (None,),
}
_DOWN = {"DownBlock2D": False, "AttnDownBlock2D": True}
_UP = {"UpBlock2D": False, "AttnUpBlock2D": True}
_EMBEDDING = {"default": "additive", "scale_shift": "scale_shift"}
_PADDING = {1: "symmetric", 0: "bottom_right"}
#: The config.json fields of the unet's sizing options (``channel_mults[i]``: the widths).
_SIZE_FIELDS = {
    "channels": "block_out_channels[0]",
    "num_res_blocks": "layers_per_block",
    "image_size": "sample_size",
}


def _unsupported(field: str, value: Any, why: str = "") -> UnsupportedLayoutError:
    return UnsupportedLayoutError(f"{field} = {value!r} is not supported{why}")


def _block_attention(types: list[Any], table: dict[str, bool], field: str) -> list[bool]:
    out = []
    for i, name in enumerate(types):
        if not isinstance(name, str):
            raise _unsupported(f"{field}[{i}]", name)
        name = name.removeprefix("UNetRes")  # diffusers strips this prefix too
        if name not in table:
            raise _unsupported(f"{field}[{i}]", name, f" (only {' and '.join(table)})")
        out.append(table[name])
    return out


def unet_options_from_diffusers(config: dict[str, Any]) -> dict[str, Any]:
    """``unet`` backbone options for a diffusers ``UNet2DModel`` ``config.json`` dict."""
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise _unsupported("_class_name", config["_class_name"], " (only UNet2DModel)")
    unknown = sorted(k for k in config if not k.startswith("_") and k not in UNET2D_DEFAULTS)
    if unknown:
        raise _unsupported(unknown[0], config[unknown[0]], " (not a UNet2DModel option known here)")
    c = {**UNET2D_DEFAULTS, **config}
    for field, allowed in _FIXED.items():
        if c[field] not in allowed:
            raise _unsupported(field, c[field], f" (only {' or '.join(map(repr, allowed))})")
    widths = list(c["block_out_channels"])
    down = _block_attention(list(c["down_block_types"]), _DOWN, "down_block_types")
    up = _block_attention(list(c["up_block_types"]), _UP, "up_block_types")
    if not widths or len(down) != len(widths) or len(up) != len(widths):
        raise _unsupported(
            "block_out_channels", widths, " (one width per down and per up block type)"
        )
    for j, attn in enumerate(up):
        i = len(down) - 1 - j
        if attn != down[i]:
            raise _unsupported(
                f"up_block_types[{j}]",
                c["up_block_types"][j],
                f" with down_block_types[{i}] = {c['down_block_types'][i]!r} "
                "(the unet has attention at the same levels on both sides)",
            )
    ch = widths[0]
    for i, w in enumerate(widths):
        if not isinstance(w, int) or w % ch:
            raise _unsupported(
                f"block_out_channels[{i}]", w, f" (a multiple of block_out_channels[0] = {ch})"
            )
    if c["time_embedding_dim"] not in (None, 4 * ch):
        raise _unsupported("time_embedding_dim", c["time_embedding_dim"], f" (only {4 * ch})")
    size = c["sample_size"]
    if isinstance(size, list | tuple) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not isinstance(size, int) or size % 2 ** (len(widths) - 1):
        raise _unsupported(
            "sample_size", c["sample_size"], f" (an int divisible by {2 ** (len(widths) - 1)})"
        )
    if c["freq_shift"] not in (0, 1):
        raise _unsupported("freq_shift", c["freq_shift"], " (only 0 or 1)")
    if c["downsample_padding"] not in _PADDING:
        raise _unsupported("downsample_padding", c["downsample_padding"], " (only 0 or 1)")
    if c["resnet_time_scale_shift"] not in _EMBEDDING:
        raise _unsupported("resnet_time_scale_shift", c["resnet_time_scale_shift"])
    groups = c["norm_num_groups"]
    attn_groups = c["attn_norm_num_groups"]
    if attn_groups is None and c["add_attention"] and c["resnet_time_scale_shift"] != "default":
        raise _unsupported(
            "attn_norm_num_groups",
            None,
            " with resnet_time_scale_shift = 'scale_shift' "
            "(the middle attention has no GroupNorm then)",
        )
    if attn_groups not in (None, groups):
        raise _unsupported(
            "attn_norm_num_groups", attn_groups, f" (only norm_num_groups = {groups})"
        )
    n_classes = c["num_class_embeds"]
    if n_classes is not None and (not isinstance(n_classes, int) or n_classes < 2):
        raise _unsupported(
            "num_class_embeds", n_classes, " (the unet's last row is its null class)"
        )
    attention_resolutions = [size // 2**i for i, a in enumerate(down) if a]
    head_dim = c["attention_head_dim"]
    attn_widths = [w for w, a in zip(widths, down, strict=True) if a]
    attn_widths += [widths[-1]] if c["add_attention"] else []
    if not attn_widths:
        head_dim = None  # no attention block: nothing to split into heads
    elif head_dim is not None and any(w % head_dim for w in attn_widths):
        raise _unsupported(
            "attention_head_dim", head_dim, f" (it must divide the attention widths {attn_widths})"
        )
    options: dict[str, Any] = {
        "in_channels": c["in_channels"],
        "channels": ch,
        "channel_mults": [w // ch for w in widths],
        "num_res_blocks": c["layers_per_block"],
        "image_size": size,
        "attention_resolutions": attention_resolutions,
        "num_heads": 1,
        "dropout": float(c["dropout"]),
        "groups": groups,
        "embedding": _EMBEDDING[c["resnet_time_scale_shift"]],
        "norm_eps": float(c["norm_eps"]),
        "freq_shift": int(c["freq_shift"]),
        "flip_sin_to_cos": bool(c["flip_sin_to_cos"]),
        "downsample_padding": _PADDING[c["downsample_padding"]],
        "mid_attention": bool(c["add_attention"]),
    }
    if c["out_channels"] != c["in_channels"]:
        options["out_channels"] = c["out_channels"]
    if head_dim is not None:
        options["head_channels"] = head_dim
    if n_classes is not None:
        options["num_classes"] = n_classes - 1
    try:
        too_big = weights_over_memory(UNetConfig(**options))
    except (TypeError, ValueError) as exc:
        raise UnsupportedLayoutError(
            f"the diffusers config maps to invalid unet options: {exc}"
        ) from exc
    if too_big is not None:  # before any tensor: name the config.json field to blame
        key, problem = too_big
        i = int(key[len("channel_mults[") : -1]) if key.startswith("channel_mults[") else 0
        field = _SIZE_FIELDS.get(key, f"block_out_channels[{i}]")
        value = {"num_res_blocks": c["layers_per_block"], "image_size": size}.get(key, widths[i])
        raise UnsupportedLayoutError(f"{field} = {value}: {problem}; lower it")
    return options


def diffusers_config_from_unet_options(options: dict[str, Any]) -> dict[str, Any]:
    """The ``UNet2DModel`` config (as ``config.json`` holds it) of a ``unet`` layout."""
    cfg = UNetConfig(**options)
    if cfg.time_input != "timestep":
        raise _unsupported("time_input", cfg.time_input, " (diffusers embeds timesteps)")
    if not cfg.resample_with_conv:
        raise _unsupported("resample_with_conv", False, " (diffusers resamples with convs)")
    levels = len(cfg.channel_mults)
    attn = [cfg.image_size // 2**i in cfg.attention_resolutions for i in range(levels)]
    widths = [cfg.channels * m for m in cfg.channel_mults]
    if cfg.channel_mults[0] != 1:
        raise _unsupported("channel_mults[0]", cfg.channel_mults[0], " (diffusers: only 1)")
    attn_widths = sorted({w for w, a in zip(widths, attn, strict=True) if a})
    if cfg.mid_attention:
        attn_widths = sorted({*attn_widths, widths[-1]})
    head_dim = cfg.head_channels
    if head_dim is None and cfg.num_heads > 1 and attn_widths:
        if len(attn_widths) > 1:
            raise _unsupported(
                "num_heads",
                cfg.num_heads,
                f" with attention widths {attn_widths} (diffusers fixes the head width: "
                "set head_channels)",
            )
        head_dim = attn_widths[0] // cfg.num_heads
    scale_shift = cfg.embedding == "scale_shift"
    return {
        "_class_name": "UNet2DModel",
        "sample_size": cfg.image_size,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels or cfg.in_channels,
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "freq_shift": 1 if cfg.freq_shift is None else cfg.freq_shift,
        "flip_sin_to_cos": cfg.flip_sin_to_cos,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "block_out_channels": widths,
        "layers_per_block": cfg.num_res_blocks,
        "mid_block_scale_factor": 1,
        "downsample_padding": 0 if cfg.downsample_padding == "bottom_right" else 1,
        "downsample_type": "conv",
        "upsample_type": "conv",
        "dropout": cfg.dropout,
        "act_fn": "silu",
        "attention_head_dim": head_dim,
        "norm_num_groups": cfg.groups,
        "attn_norm_num_groups": cfg.groups if scale_shift else None,
        "norm_eps": cfg.norm_eps,
        "resnet_time_scale_shift": "scale_shift" if scale_shift else "default",
        "add_attention": cfg.mid_attention,
        "class_embed_type": None,
        "num_class_embeds": None if cfg.num_classes is None else cfg.num_classes + 1,
    }


# --------------------------------------------------------------------------- weights

_RES = {"norm1": "norm1", "conv1": "conv1", "emb_proj": "time_emb_proj", "norm2": "norm2",
        "conv2": "conv2", "skip": "conv_shortcut"}  # fmt: skip
_LEGACY_ATTN = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")
_LEGACY_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _module_pairs(options: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(our prefix, diffusers prefix, kind)`` of every module, kind in plain/res/attn."""
    cfg = UNetConfig(**options)
    levels, n = len(cfg.channel_mults), cfg.num_res_blocks
    attn = [cfg.image_size // 2**i in cfg.attention_resolutions for i in range(levels)]
    pairs = [("time_mlp.0", "time_embedding.linear_1", "plain"),
             ("time_mlp.2", "time_embedding.linear_2", "plain"),
             ("class_embed", "class_embedding", "plain"), ("conv_in", "conv_in", "plain"),
             ("norm_out", "conv_norm_out", "plain"), ("conv_out", "conv_out", "plain"),
             ("mid.res", "mid_block.resnets.0", "res"), ("mid_res", "mid_block.resnets.1", "res"),
             ("mid.attn", "mid_block.attentions.0", "attn")]  # fmt: skip
    k = 0
    for level in range(levels):
        for j in range(n):
            pairs.append((f"down.{k}.res", f"down_blocks.{level}.resnets.{j}", "res"))
            if attn[level]:
                pairs.append((f"down.{k}.attn", f"down_blocks.{level}.attentions.{j}", "attn"))
            k += 1
        if level != levels - 1:
            pairs.append((f"down.{k}.conv", f"down_blocks.{level}.downsamplers.0.conv", "plain"))
            k += 1
    k = 0
    for u, level in enumerate(reversed(range(levels))):
        for i in range(n + 1):
            ours = f"up.{k}.block" if level != 0 and i == n else f"up.{k}"
            pairs.append((f"{ours}.res", f"up_blocks.{u}.resnets.{i}", "res"))
            if attn[level]:
                pairs.append((f"{ours}.attn", f"up_blocks.{u}.attentions.{i}", "attn"))
            if ours.endswith(".block"):
                pairs.append((f"up.{k}.upsample.conv", f"up_blocks.{u}.upsamplers.0.conv", "plain"))
            k += 1
    return pairs


def _param_pairs(options: dict[str, Any]) -> list[tuple[str, tuple[str, ...], str]]:
    """``(our key, diffusers keys, op)`` of every parameter the layout may hold.

    op: ``same``; ``1x1`` (a 1×1 conv weight ↔ a Linear weight); ``qkv`` (one qkv conv ↔
    ``to_q``, ``to_k``, ``to_v``). Keys a block lacks (a shortcut, a class table) are skipped.
    """
    out = []
    for ours, theirs, kind in _module_pairs(options):
        for p in ("weight", "bias"):
            if kind == "plain":
                out.append((f"{ours}.{p}", (f"{theirs}.{p}",), "same"))
            elif kind == "res":
                out += [
                    (f"{ours}.{o}.{p}", (f"{theirs}.{t}.{p}",), "same") for o, t in _RES.items()
                ]
            else:
                op = "1x1" if p == "weight" else "same"
                out += [(f"{ours}.norm.{p}", (f"{theirs}.group_norm.{p}",), "same"),
                        (f"{ours}.qkv.{p}", tuple(f"{theirs}.to_{x}.{p}" for x in "qkv"), "qkv"),
                        (f"{ours}.proj.{p}", (f"{theirs}.to_out.0.{p}",), op)]  # fmt: skip
    return out


def state_dict_from_diffusers(
    sd: dict[str, torch.Tensor], options: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """The ``unet`` state dict of a ``UNet2DModel`` one (legacy attention names accepted)."""
    sd = {_legacy_renamed(key): v for key, v in sd.items()}
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for ours, theirs, op in _param_pairs(options):
        if not all(t in sd for t in theirs):
            continue
        used.update(theirs)
        values = [sd[t] for t in theirs]
        value = torch.cat(values) if op == "qkv" else values[0]
        is_matrix = op == "1x1" or (op == "qkv" and value.dim() == 2)
        out[ours] = value[:, :, None, None] if is_matrix else value
    _check_all_used(sd, used, "diffusers")
    return out


def state_dict_to_diffusers(
    sd: dict[str, torch.Tensor], options: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """The ``UNet2DModel`` state dict of a ``unet`` one (inverse of the above)."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for ours, theirs, op in _param_pairs(options):
        if ours not in sd:
            continue
        used.add(ours)
        value = sd[ours]
        if value.dim() == 4 and op != "same":
            value = value.reshape(value.shape[0], -1)
        parts = value.chunk(3) if op == "qkv" else (value,)
        out.update((t, v.contiguous()) for t, v in zip(theirs, parts, strict=True))
    _check_all_used(sd, used, "unet")
    return out


def _check_all_used(sd: dict[str, torch.Tensor], used: set[str], side: str) -> None:
    left = sorted(set(sd) - used)
    if left:
        raise UnsupportedLayoutError(
            f"{len(left)} {side} weights do not belong to this layout, first {left[0]!r}"
        )


def _legacy_renamed(key: str) -> str:
    """diffusers < 0.15 attention names (``query``, ``proj_attn``, ...) → today's."""
    m = _LEGACY_ATTN.match(key)
    return f"{m[1]}.{_LEGACY_NAMES[m[2]]}.{m[3]}" if m else key
