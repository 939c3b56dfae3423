"""What only a whole recipe shows: ``train`` against the machine and the data, then every
component's own ``check`` with the facts the others state."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from denoisekit.config import memory_limit, over_memory
from denoisekit.contracts import KIND_RECORDS, BackboneConfig, CheckContext, optional
from denoisekit.errors import DenoisekitError, RegistryError
from denoisekit.files import RunPaths
from denoisekit.host.convert import join_key
from denoisekit.host.registry import Registry
from denoisekit.host.suggest import exception_line


def check_recipe(recipe: Any, registry: Registry) -> list[tuple[str, str]]:
    """The problems only the whole recipe shows, as ``(key path, message)`` pairs.

    The core checks ``train`` against the machine and the data; then every component's
    :attr:`~denoisekit.ComponentSpec.check` runs, in build order, with the facts the
    components state (:attr:`~denoisekit.ComponentSpec.facts`). :func:`recipe_from_data`
    calls this, so ``recipe check``, ``train``, ``sample`` and ``compare`` all stop here.

    Raises:
        RegistryError: a component's ``facts`` or ``check`` itself failed (a plugin bug;
            the message names the plugin).
    """
    singles = [k.name for k in KIND_RECORDS if not k.many and recipe.component(k.name)]
    choices = [(kind, kind, recipe.component(kind)) for kind in singles]
    for k in KIND_RECORDS:
        if k.many:
            choices += [(k.name, f"{k.table}.{n}", c) for n, c in getattr(recipe, k.table).items()]
    facts: dict[str, dict[str, Any]] = {}
    for kind in singles:
        choice = recipe.component(kind)
        entry = registry.get(kind, choice.type)
        if entry.spec.facts is not None:
            stated = _call_plugin(entry, "facts", lambda e=entry, c=choice: e.spec.facts(c.config))
            facts[kind] = dict(stated or {})
    problems = _core_problems(recipe, facts)
    for kind, table, choice in choices:
        entry = registry.get(kind, choice.type)
        if entry.spec.check is None:
            continue
        context = CheckContext(recipe=recipe, facts=facts, table=table)
        found = _call_plugin(
            entry, "check", lambda e=entry, c=choice, x=context: list(e.spec.check(c.config, x))
        )
        problems += [(join_key(table, key) if key else table, message) for key, message in found]
    return problems


def _call_plugin(entry: Any, what: str, call: Any) -> Any:
    try:
        return call()
    except DenoisekitError:
        raise
    except Exception as exc:
        raise RegistryError(
            f"{entry.label}: its {what} failed on this recipe: {exception_line(exc)}"
        ) from exc


def _core_problems(recipe: Any, facts: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str]]:
    """``train`` against the machine and the data's facts; the backbone against the data."""
    problems = _device_problems(recipe.train.device)
    data = facts.get("data", {})
    train = recipe.train
    num_images = data.get("num_images")
    micro = train.batch_size // train.grad_accum
    if num_images is not None and (num_images == 0 or (train.drop_last and num_images < micro)):
        message = (
            f"the data's training split has {num_images} images, fewer than one micro-batch "
            f"of {micro}; lower train.batch_size or set train.drop_last = false"
        )
        problems.append(("train.batch_size", message))
    problems += _init_from_problems(recipe)
    if recipe.trains_autoencoder:
        return problems + _autoencoder_problems(recipe, data.get("image_shape"))
    problems += _memory_problems(recipe, facts.get("backbone", {}))
    if recipe.autoencoder is not None:  # a diffusion recipe's autoencoder is [latent]'s run
        message = (
            "a diffusion recipe takes its autoencoder from a trained run: remove the "
            '[autoencoder] table and name the run in [latent] autoencoder = "...", or '
            "remove [backbone] to train the autoencoder (docs/latent.md)"
        )
        problems.append(("autoencoder", message))
    problems += _guidance_problems(recipe)
    problems += _latent_problems(recipe)
    shape = data.get("image_shape")
    if shape is None or recipe.latent is not None:  # the engine compares the latent shape
        return problems
    c, h, w = shape
    if h != w:
        message = f"the data gives {c}×{h}×{w} images; backbones take square ones: resize them"
        return [*problems, ("data", message)]
    cfg = recipe.backbone.config
    keys: tuple[tuple[str, int], ...] = (("in_channels", c), ("image_size", h))
    if recipe.inpainting.enabled:
        problems += _inpainting_problems(cfg, c)
        keys = keys[1:]
    wanted = {k: optional(cfg, BackboneConfig, k) for k in ("in_channels", "image_size")}
    for key, value in keys:
        if wanted[key] is not None and wanted[key] != value:
            expects = f"{wanted['in_channels'] or c}×{wanted['image_size'] or h}"
            message = (
                f"the data gives {c}×{h}×{w} images but the backbone expects {expects}×"
                f"{wanted['image_size'] or h}; set backbone.{key} = {value} (or change the data)"
            )
            problems.append((f"backbone.{key}", message))
    return problems


def _autoencoder_problems(recipe: Any, shape: Any) -> list[tuple[str, str]]:
    """An autoencoder recipe: no labels, no sampling metrics, a discriminator that trains
    and that the images are large enough for."""
    problems = []
    if recipe.train.label_dropout > 0:
        problems.append(("train.label_dropout", "an autoencoder recipe uses no labels: set 0"))
    for name in recipe.metrics:
        problems.append(
            (
                f"metrics.{name}",
                "an autoencoder run draws no samples to measure: remove the table "
                "(benchmarks/autoencoder_quality.py measures reconstructions)",
            )
        )
    cfg = recipe.autoencoder_training
    if not cfg.discriminator:
        return problems
    if cfg.disc_start >= recipe.train.steps:
        problems.append(
            (
                "autoencoder_training.disc_start",
                f"{cfg.disc_start} is not below train.steps = {recipe.train.steps}: the "
                "discriminator would never train; lower it, or set discriminator = false",
            )
        )
    side = min(shape[1:]) if shape is not None else None
    if side is not None and side // 2**cfg.disc_layers - 2 < 1:  # the PatchGAN's output side
        problems.append(
            (
                "autoencoder_training.disc_layers",
                f"{cfg.disc_layers} stride-2 layers leave no patch of the data's {side}×{side} "
                f"images (needs sides of at least {3 * 2**cfg.disc_layers}): use fewer",
            )
        )
    return problems


def _latent_problems(recipe: Any) -> list[tuple[str, str]]:
    """``[latent]`` names an existing autoencoder (the backbone against its latent shape is
    the engine's check: :func:`denoisekit.engine.autoencoder_source.latent_problems`)."""
    latent = recipe.latent
    if latent is None:
        return []
    problems = []
    stored = recipe.path is not None and recipe.path.suffix == ".pt"
    path = recipe.root / latent.autoencoder
    if not stored and not path.exists():
        name = Path(latent.autoencoder).name
        problems.append(
            (
                "latent.autoencoder",
                f"{path}: no such autoencoder run or AutoencoderKL folder; train the "
                f"autoencoder first (`denoisekit train recipes/{name}.toml` writes runs/{name}), "
                "or fix the path (relative to the recipe's folder)",
            )
        )
    if recipe.inpainting.enabled:
        message = "[inpainting] models are pixel space only; use `denoisekit edit --inpaint`"
        problems.append(("inpainting.masks", f"{message} with a latent run, or remove [latent]"))
    return problems


def _inpainting_problems(cfg: Any, c: int) -> list[tuple[str, str]]:
    """An inpainting model takes ``[x_t, masked image, mask]`` and predicts ``C`` channels."""
    problems = []
    for key, value in (("in_channels", 2 * c + 1), ("out_channels", c)):
        got = getattr(cfg, key, None)
        if got != value:
            problems.append(
                (
                    f"backbone.{key}",
                    f"{'unset' if got is None else got}, but [inpainting] on {c}-channel images "
                    f"needs in_channels = {2 * c + 1} (noisy image, masked image, mask) and "
                    f"out_channels = {c}: set backbone.{key} = {value}",
                )
            )
    return problems


def _init_from_problems(recipe: Any) -> list[tuple[str, str]]:
    """``train.init_from`` must name a run folder with a last checkpoint, a ``.pt``
    checkpoint or a ``.safetensors`` file. Not checked in a recipe read back from a
    checkpoint: a trained run's record, which will not start again."""
    name = recipe.train.init_from
    if name is None or (recipe.path is not None and recipe.path.suffix == ".pt"):
        return []
    path = recipe.root / name
    if path.is_dir():
        last = RunPaths(path).last_checkpoint
        if last.is_file():
            return []
        why = f"{path} holds no {RunPaths(path).relative(last)}"
    elif path.is_file():
        if path.suffix in (".pt", ".safetensors"):
            return []
        why = f"{path} is neither a .pt checkpoint nor a .safetensors file"
    else:
        why = f"{path}: no such run folder or checkpoint"
    return [("train.init_from", f"{why} (relative paths are read from the recipe's folder)")]


def _memory_problems(recipe: Any, backbone: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A training micro-batch must fit in memory: the float32 weights and gradients, and the
    activations each image keeps for the backward (the backbone's facts, lower bounds; its
    own check refuses weights that alone do not fit). Not checked in a recipe read back from
    a checkpoint (its run is not trained again; sampling keeps no activations)."""
    parameters, per_image = backbone.get("num_parameters"), backbone.get("activation_bytes")
    stored = recipe.path is not None and recipe.path.suffix == ".pt"
    if stored or parameters is None or per_image is None or over_memory(4 * parameters, ""):
        return []
    micro = recipe.train.batch_size // recipe.train.grad_accum
    what = f"training a micro-batch of {micro} images (float32 activations and weights)"
    problem = over_memory(8 * parameters + micro * per_image, what)
    if problem is None:
        return []
    fit = (memory_limit() or 0) - 8 * parameters
    if fit >= per_image:
        return [
            (
                "train.batch_size",
                f"{problem}; {fit // per_image} images fit: lower train.batch_size, or raise "
                "train.grad_accum (micro-batches of batch_size / grad_accum)",
            )
        ]
    one = over_memory(8 * parameters + per_image, "training on one image (float32)")
    return [("backbone.image_size", f"{one}; lower backbone.image_size or the widths")]


def _guidance_problems(recipe: Any) -> list[tuple[str, str]]:
    """Label dropout and guidance need a class-conditional backbone."""
    if optional(recipe.backbone.config, BackboneConfig, "num_classes"):
        return []
    problems = []
    if recipe.train.label_dropout > 0:
        problems.append(
            (
                "train.label_dropout",
                "needs a class-conditional backbone: set backbone.num_classes to the data's "
                "classes, or train.label_dropout = 0",
            )
        )
    if recipe.guidance.scale != 1:
        problems.append(
            (
                "guidance.scale",
                f"{recipe.guidance.scale} needs a class-conditional backbone "
                "(backbone.num_classes) trained with train.label_dropout; this one is "
                "unconditional: leave it at 1",
            )
        )
    return problems


def _device_problems(device: str) -> list[tuple[str, str]]:
    """A device the recipe names that this machine does not have."""
    if device == "auto":
        return []
    import torch

    parsed = torch.device(device)
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            return [("train.device", f"{device!r}: CUDA is not available; use 'auto' or 'cpu'")]
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count and "LOCAL_RANK" not in os.environ:
            return [("train.device", f"{device!r}: this machine has {count} CUDA device(s)")]
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        return [("train.device", f"{device!r}: MPS is not available; use 'auto' or 'cpu'")]
    return []
