"""Whether a state dict of weights fits a module, said in one line before it is loaded.

torch's ``load_state_dict`` lists every mismatch on many lines under an empty first line
("Error(s) in loading state_dict for UNet:"); a user needs the first tensor that does not
fit, with both shapes, and how many keys are missing or unexpected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from denoisekit.errors import CheckpointError


def _shape(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return "×".join(map(str, shape)) if shape is not None and len(shape) else "a scalar"


def _keys(names: list[str]) -> str:
    more = f" and {len(names) - 1} more" if len(names) > 1 else ""
    return f"{names[0]!r}{more}"


def misfit(module: nn.Module, weights: Mapping[str, Any]) -> str | None:
    """What keeps ``weights`` from loading into ``module`` (``None``: they fit): the first
    tensor whose shape differs (both shapes), then the missing and unexpected keys."""
    # torch.compile's wrapper prefixes its keys; load_state_dict takes them unprefixed too.
    expected = {k.replace("_orig_mod.", ""): v for k, v in module.state_dict().items()}
    parts = []
    for key, value in weights.items():
        if key in expected and not isinstance(value, torch.Tensor):
            parts.append(f"{key} is not a tensor ({type(value).__name__})")
        elif key in expected and value.shape != expected[key].shape:
            parts.append(
                f"{key} is {_shape(value)} in the file but {_shape(expected[key])} in this backbone"
            )
        if parts:
            break
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing:
        parts.append(f"{len(missing)} tensors missing from the file ({_keys(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected in it ({_keys(unexpected)})")
    return "; ".join(parts) or None


def load_fitting(module: nn.Module, weights: Mapping[str, Any], *, source: str) -> None:
    """``module.load_state_dict(weights)``, or one :class:`CheckpointError` line naming
    ``source``, the first tensor that does not fit and both shapes."""
    problem = misfit(module, weights)
    if problem is not None:
        raise CheckpointError(
            f"{source}: the weights do not fit this recipe's backbone: {problem}; the recipe "
            "must describe the network the weights were trained with"
        )
    module.load_state_dict(weights)
