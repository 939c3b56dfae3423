"""``torch.compile`` the backbone for training (``[hooks.compile]``).

The hook answers ``denoisekit_train_model`` (the module the training forward pass calls)
with ``torch.compile(run.model, ...)``. ``run.model`` stays the raw module,
shared with the compiled wrapper: checkpoints hold its plain state dict (no
``_orig_mod.`` prefixes), so they load into runs with or without this hook, and sampling
(previews, the EMA copy) uses uncompiled modules.

The first steps are slow while the graph compiles (minutes on a CPU); ``inductor`` needs a
C++ compiler on CPU and Triton on CUDA. ``backend = "eager"`` or ``"aot_eager"`` trace the
model without generating code, to debug graph breaks cheaply.

Recipe example::

    [hooks.compile]
    mode = "max-autotune"
    dynamic = "false"
"""

from __future__ import annotations

import logging
from typing import Any

import attrs
import torch

from denoisekit import ComponentSpec, hookimpl
from denoisekit.config import option

log = logging.getLogger(__name__)

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: TOML has no null, so ``dynamic`` is a string: "auto" is torch's None (detect).
DYNAMIC = {"auto": None, "true": True, "false": False}


@attrs.frozen(kw_only=True)
class CompileConfig:
    """Options of ``[hooks.compile]``."""

    mode: str = option(
        "default",
        "inductor mode: default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs",
        validator=attrs.validators.in_(MODES),
    )
    fullgraph: bool = option(
        False,
        "fail on graph breaks instead of falling back to Python",
        validator=attrs.validators.instance_of(bool),
    )
    dynamic: str = option(
        "auto",
        "dynamic shapes: auto (after a shape changes), true, false (recompile per shape)",
        validator=attrs.validators.in_(tuple(DYNAMIC)),
    )
    backend: str = option(
        "inductor",
        "torch.compile backend (inductor, or eager / aot_eager to debug)",
        validator=attrs.validators.instance_of(str),
    )


class CompileHook:
    """The run hook."""

    def __init__(self, config: CompileConfig) -> None:
        self.config = config

    def compile(self, model: torch.nn.Module) -> torch.nn.Module:
        """``torch.compile(model)`` with this hook's options."""
        cfg = self.config
        kwargs: dict[str, Any] = {"fullgraph": cfg.fullgraph, "backend": cfg.backend}
        if cfg.backend == "inductor":
            kwargs["mode"] = cfg.mode  # modes are inductor's
        if DYNAMIC[cfg.dynamic] is not None:
            kwargs["dynamic"] = DYNAMIC[cfg.dynamic]
        return torch.compile(model, **kwargs)

    @hookimpl
    def denoisekit_train_model(self, model: torch.nn.Module) -> torch.nn.Module:
        log.info("compile: the training forward runs through torch.compile (%s)", self.config)
        return self.compile(model)


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    """Register ``compile``."""
    return [
        ComponentSpec(
            kind="hook",
            name="compile",
            config=CompileConfig,
            build=CompileHook,
            summary="torch.compile the backbone for the training forward pass.",
        )
    ]
