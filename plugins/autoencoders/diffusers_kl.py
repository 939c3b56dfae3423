"""The ``kl`` autoencoder's ``"diffusers"`` format: diffusers ``AutoencoderKL`` configs and
weights ↔ ``[autoencoder]`` tables and ``kl`` weights.

The ``kl`` network has diffusers' module layout, so the weights keep their names; only the
attention names of older diffusers files (``query``, ``key``, ``value``, ``proj_attn``)
are renamed, as ``from_pretrained`` does. Latent normalisation: diffusers pipelines feed
``(z - shift_factor) * scaling_factor`` to the diffusion model, or, where a config has
``latents_mean``/``latents_std``, ``(z - latents_mean) * scaling_factor / latents_std``;
``kl`` keeps ``(z - shift) * scale`` per channel, so ``shift = latents_mean`` (else
``shift_factor`` or 0) and ``scale = scaling_factor / latents_std`` (else
``scaling_factor``). Export writes ``scaling_factor``/``shift_factor`` when every channel
has the same shift and scale, else ``latents_mean``/``latents_std`` with
``scaling_factor = 1``.

What ``kl`` cannot express (other block types, activations, ``out_channels`` other than
``in_channels``) is an :class:`UnsupportedLayoutError` naming the field.
"""

from __future__ import annotations

from typing import Any

import torch

from denoisekit.plugins.autoencoders.kl_config import KLConfig
from denoisekit.plugins.autoencoders.kl_network import KLAutoencoder
from denoisekit.plugins.backbones.diffusers_layout import UnsupportedLayoutError

#: ``AutoencoderKL.__init__`` defaults (diffusers 0.42), for keys a config.json omits.
AUTOENCODER_KL_DEFAULTS: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D"],
    "block_out_channels": [64],
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 32,
    "scaling_factor": 0.18215,
    "shift_factor": None,
    "latents_mean": None,
    "latents_std": None,
    "force_upcast": True,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}
#: Attention parameter names of older diffusers files → today's (and ``kl``'s).
OLD_ATTENTION_NAMES: dict[str, str] = {
    "query": "to_q",
    "key": "to_k",
    "value": "to_v",
    "proj_attn": "to_out.0",
}


def _unsupported(field: str, value: Any, why: str = "") -> UnsupportedLayoutError:
    return UnsupportedLayoutError(f"{field} = {value!r} is not supported{why}")


def kl_options_from_diffusers(config: dict[str, Any]) -> dict[str, Any]:
    """``[autoencoder]`` options (``type`` excluded) of an ``AutoencoderKL`` config."""
    c = {**AUTOENCODER_KL_DEFAULTS, **config}
    widths = list(c["block_out_channels"])
    for field, block in (("down_block_types", "DownEncoderBlock2D"),
                         ("up_block_types", "UpDecoderBlock2D")):  # fmt: skip
        types = list(c[field])
        if len(types) != len(widths):
            raise _unsupported(field, types, f": one per block_out_channels ({len(widths)})")
        for i, name in enumerate(types):
            if name != block:
                raise _unsupported(f"{field}[{i}]", name, f" (kl has {block} only)")
    if c["act_fn"] not in ("silu", "swish"):
        raise _unsupported("act_fn", c["act_fn"], " (kl uses silu)")
    if c["out_channels"] != c["in_channels"]:
        raise _unsupported("out_channels", c["out_channels"], " (kl decodes to in_channels)")
    return {
        "in_channels": int(c["in_channels"]),
        "block_channels": [int(w) for w in widths],
        "num_res_blocks": int(c["layers_per_block"]),
        "latent_channels": int(c["latent_channels"]),
        "groups": int(c["norm_num_groups"]),
        "mid_attention": bool(c["mid_block_add_attention"]),
        "quant_conv": bool(c["use_quant_conv"]),
        "post_quant_conv": bool(c["use_post_quant_conv"]),
    }


def shift_scale_from_diffusers(config: dict[str, Any], channels: int) -> tuple[torch.Tensor, ...]:
    """``(shift, scale)``, float32 ``(channels,)``, of an ``AutoencoderKL`` config."""
    c = {**AUTOENCODER_KL_DEFAULTS, **config}
    factor = torch.full((channels,), float(c["scaling_factor"]), dtype=torch.float64)
    if c["latents_mean"] is not None and c["latents_std"] is not None:
        mean = torch.tensor(c["latents_mean"], dtype=torch.float64).flatten()
        std = torch.tensor(c["latents_std"], dtype=torch.float64).flatten()
        if mean.numel() != channels or std.numel() != channels:
            raise _unsupported("latents_mean", c["latents_mean"], f": {channels} values needed")
        return mean.float(), (factor / std).float()
    shift = torch.full((channels,), float(c["shift_factor"] or 0.0), dtype=torch.float64)
    return shift.float(), factor.float()


def diffusers_config_from_kl(options: dict[str, Any], shift: Any, scale: Any) -> dict[str, Any]:
    """The ``AutoencoderKL`` config.json of ``kl`` options and its shift and scale."""
    levels = len(options["block_channels"])
    shift = torch.as_tensor(shift, dtype=torch.float64).flatten()
    scale = torch.as_tensor(scale, dtype=torch.float64).flatten()
    config = {
        **AUTOENCODER_KL_DEFAULTS,
        "_class_name": "AutoencoderKL",
        "in_channels": options["in_channels"],
        "out_channels": options["in_channels"],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": list(options["block_channels"]),
        "layers_per_block": options["num_res_blocks"],
        "latent_channels": options["latent_channels"],
        "norm_num_groups": options["groups"],
        "mid_block_add_attention": options["mid_attention"],
        "use_quant_conv": options["quant_conv"],
        "use_post_quant_conv": options["post_quant_conv"],
    }
    if bool((shift == shift[0]).all()) and bool((scale == scale[0]).all()):
        config["scaling_factor"] = float(scale[0])
        config["shift_factor"] = float(shift[0]) if float(shift[0]) != 0.0 else None
    else:
        config["scaling_factor"] = 1.0
        config["latents_mean"] = shift.tolist()
        config["latents_std"] = (1.0 / scale).tolist()
    return config


def _renamed(key: str) -> str:
    head, _, leaf = key.rpartition(".")  # leaf: weight or bias
    owner, _, name = head.rpartition(".")
    if ".attentions." in key and name in OLD_ATTENTION_NAMES:
        return f"{owner}.{OLD_ATTENTION_NAMES[name]}.{leaf}"
    return key


def _expected_shapes(options: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # shapes only: nothing allocated
        model = KLAutoencoder(KLConfig(**options))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


class DiffusersKLFormat:
    """``AutoencoderKL`` configs and weights as ``[autoencoder]`` tables and ``kl`` weights."""

    #: The ``_class_name`` values of ``config.json`` this converter reads.
    model_classes: tuple[str, ...] = ("AutoencoderKL",)

    def import_model(
        self, config: dict[str, Any], weights: dict[str, torch.Tensor]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, torch.Tensor]]:
        """``(tables, state dict)``: ``{"autoencoder": table}`` and the ``kl`` weights,
        ``shift`` and ``scale`` included.

        Raises:
            UnsupportedLayoutError: a config field ``kl`` cannot express, or weights that
                do not fit the config (missing, unexpected or misshapen keys, named).
        """
        options = kl_options_from_diffusers(config)
        state = {_renamed(k): v for k, v in weights.items()}
        shift, scale = shift_scale_from_diffusers(config, options["latent_channels"])
        state.update(shift=shift, scale=scale)
        expected = _expected_shapes(options)
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        bad = sorted(k for k in expected if k in state and tuple(state[k].shape) != expected[k])
        for what, keys in (("missing", missing), ("unexpected", extra), ("misshapen", bad)):
            if keys:
                more = f" (and {len(keys) - 3} more)" if len(keys) > 3 else ""
                raise UnsupportedLayoutError(
                    f"the weights do not fit the config: {what} {', '.join(keys[:3])}{more}"
                )
        return {"autoencoder": {"type": "kl", **options}}, state

    def export_model(
        self, table: dict[str, Any], weights: dict[str, torch.Tensor]
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """``(config.json, diffusers weights)`` of a resolved ``[autoencoder]`` table and
        its ``kl`` weights (``shift``/``scale`` go into the config)."""
        options = {k: v for k, v in table.items() if k != "type"}
        config = diffusers_config_from_kl(options, weights["shift"], weights["scale"])
        theirs = {k: v for k, v in weights.items() if k not in ("shift", "scale")}
        return config, theirs


#: The converter the ``kl`` spec declares.
DIFFUSERS = DiffusersKLFormat()
