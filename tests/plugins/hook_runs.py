"""Tiny real training runs for the hook-plugin tests (tests/plugins/test_hook_*.py).

The registry holds only the components these runs use (listed by module), so a hook test
does not depend on every other built-in plugin importing.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tomli_w
import torch

from denoisekit import hookimpl, testing
from denoisekit.engine.build import build_run
from denoisekit.engine.run import Run
from denoisekit.host.plugin_manager import get_plugin_manager
from denoisekit.host.recipe import Recipe, load_recipe
from denoisekit.host.registry import Registry

MODULES = (
    "denoisekit.plugins.data.digits",
    "denoisekit.plugins.schedules.cosine",
    "denoisekit.plugins.backbones.unet",
    "denoisekit.plugins.losses.mse",
    "denoisekit.plugins.optim.adam",
    "denoisekit.plugins.optim.lr_constant",
    "denoisekit.plugins.samplers.ddim",
    "denoisekit.plugins.hooks.ema",
    "denoisekit.plugins.hooks.amp",
    "denoisekit.plugins.hooks.compile",
    "denoisekit.plugins.hooks.tensorboard",
    "denoisekit.plugins.hooks.checkpoint",
    "denoisekit.plugins.hooks.progress",
    "denoisekit.plugins.hooks.nan_guard",
    "denoisekit.plugins.hooks.preview",
)

TINY_UNET = {
    "type": "unet",
    "channels": 16,
    "channel_mults": [1, 2],
    "num_res_blocks": 1,
    "attention_resolutions": [4],
    "groups": 8,
    "image_size": 8,
    "in_channels": 1,
    "dropout": 0.0,
}


def single_thread() -> Iterator[None]:
    """Fixture body (``yield from single_thread()``): one intra-op thread while a test
    module runs (see :func:`denoisekit.testing.single_thread`), then restore."""
    with testing.single_thread():
        yield


@functools.cache
def registry() -> Registry:
    """The components of the tiny runs and every hook plugin."""
    return Registry.from_plugin_manager(
        get_plugin_manager(plugins=list(MODULES), builtins=False, autoload=False)
    )


def tiny_recipe(
    folder: Path,
    *,
    steps: int = 4,
    hooks: dict[str, dict[str, Any]] | None = None,
    train: dict[str, Any] | None = None,
    backbone: dict[str, Any] | None = None,
    optimizer: dict[str, Any] | None = None,
    name: str = "tiny",
) -> Recipe:
    """Write a tiny digits recipe to ``folder/<name>.toml`` and load it."""
    data = {
        "name": name,
        "seed": 0,
        "data": {"type": "digits"},
        "schedule": {"type": "cosine", "num_timesteps": 100},
        "backbone": {**TINY_UNET, **(backbone or {})},
        "loss": {"type": "mse"},
        "optimizer": {"type": "adamw", **(optimizer or {})},
        "lr_schedule": {"type": "constant"},
        "sampler": {"type": "ddim", "steps": 5},
        "train": {
            "steps": steps,
            "batch_size": 8,
            "device": "cpu",
            "log_every": 2,
            **(train or {}),
        },
        "hooks": hooks or {},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return load_recipe(path, registry=registry())


def tiny_run(
    folder: Path, recipe: Recipe, *, out: str = "run", extra_hooks: tuple[Any, ...] = ()
) -> Run:
    """Build the run of ``recipe`` into ``folder/out``."""
    return build_run(recipe, out_dir=folder / out, registry=registry(), extra_hooks=extra_hooks)


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of a module's parameters and buffers."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Poison:
    """A plugin that makes the model output (hence the loss and the gradients) NaN from
    optimization step ``from_step`` on."""

    def __init__(self, from_step: int) -> None:
        self.from_step = from_step

    @hookimpl(tryfirst=True)
    def denoisekit_train_forward(self, run, x_t, t, cond):
        out = run.train_model(x_t, t, cond)
        return out * float("nan") if run.step + 1 >= self.from_step else out
