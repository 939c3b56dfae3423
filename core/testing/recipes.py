"""Tiny recipes for tests: a digits run that trains in about a second on a CPU.

:data:`TINY_RECIPE` is the base; :func:`write_recipe` writes it with tables replaced or
merged; :func:`train_tiny` loads, builds and trains one, with extra plugins::

    path = write_recipe(tmp_path, {"sampler": {"type": "heun", "steps": 4}})
    run = train_tiny(path, plugins=[my_plugin])
    images = run.sample(4, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

__all__ = ["TINY_RECIPE", "TINY_UNET", "train_tiny", "write_recipe"]

#: A small U-Net for 8×8 single-channel images (about 60k parameters).
TINY_UNET: dict[str, Any] = {
    "type": "unet",
    "in_channels": 1,
    "image_size": 8,
    "channels": 8,
    "channel_mults": [1, 2],
    "num_res_blocks": 1,
    "attention_resolutions": [4],
    "groups": 4,
    "dropout": 0.0,
}

#: The base tiny recipe: bundled digits, the tiny U-Net, a 100-step cosine schedule, 2 steps.
TINY_RECIPE: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "data": {"type": "digits"},
    "schedule": {"type": "cosine", "num_timesteps": 100},
    "backbone": TINY_UNET,
    "loss": {"type": "mse"},
    "optimizer": {"type": "adamw", "lr": 1e-3},
    "lr_schedule": {"type": "constant"},
    "sampler": {"type": "ddim", "steps": 5},
    "train": {"steps": 2, "batch_size": 8, "device": "cpu", "log_every": 1},
}


def write_recipe(
    folder: Path | str, overrides: Mapping[str, Any] | None = None, *, name: str = "tiny"
) -> Path:
    """Write :data:`TINY_RECIPE` with ``overrides`` to ``folder/<name>.toml``.

    Overrides merge table by table (:func:`denoisekit.host.recipe.deep_merge`): a table with
    another ``type`` replaces the base table whole, so ``{"backbone": {"type": "mynet"}}``
    drops the U-Net's options; ``{"train": {"steps": 5}}`` changes one key.

    Returns:
        The recipe file's path.
    """
    from denoisekit.host.recipe import deep_merge

    data = deep_merge(copy.deepcopy(TINY_RECIPE), {"name": name, **(overrides or {})})
    path = Path(folder) / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def train_tiny(
    recipe: Path | str,
    *,
    plugins: Iterable[Any] = (),
    overrides: Sequence[str] = (),
    out_dir: Path | str | None = None,
    autoload: bool = False,
) -> Any:
    """Load, build and train a recipe on one CPU thread; return the trained run.

    Args:
        recipe: the recipe file (its ``plugins = [...]`` are loaded from its folder).
        plugins: extra plugin objects or module names (a plugin under test).
        overrides: ``--set`` strings.
        out_dir: the run folder (default: ``run-<name>`` beside the recipe).
        autoload: also load ``denoisekit`` entry points (off by default, so an installed
            copy of the plugin under test does not register twice).

    Returns:
        The :class:`denoisekit.engine.run.Run`, trained.
    """
    from denoisekit.engine.build import build_run
    from denoisekit.engine.loop import train
    from denoisekit.host.recipe import load_recipe, read_recipe_data
    from denoisekit.host.registry import load_registry
    from denoisekit.testing.conformance import single_thread

    recipe = Path(recipe)
    names = read_recipe_data(recipe)[0].get("plugins", [])
    registry = load_registry(
        plugins=[*names, *plugins], search_paths=[recipe.parent], autoload=autoload
    )
    with single_thread():  # tiny tensors: see single_thread
        loaded = load_recipe(recipe, overrides, registry=registry)
        out = Path(out_dir) if out_dir is not None else recipe.parent / f"run-{loaded.name}"
        return train(build_run(loaded, out_dir=out, registry=registry))
