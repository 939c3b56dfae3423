"""The frozen autoencoder of a latent run (``[latent] autoencoder``), owned here: where it
comes from, how it is loaded, and its weights' hash.

Two sources (docs/latent.md, "Latent diffusion: stage 2"):

* a **denoisekit autoencoder run** (a run folder or checkpoint of an autoencoder recipe),
  opened through :func:`~denoisekit.engine.run_folder.open_run` (its plugins as installed):
  the autoencoder is built from the stored recipe's ``[autoencoder]`` table and gets the
  sampling weights: the EMA weights where the run kept them (``hooks.ema.model``, as for a
  diffusion run), else the trained ones; its latent ``shift``/``scale`` buffers come with
  them (an autoencoder run calibrates the weights it samples with);
* a **diffusers** ``AutoencoderKL`` folder (``config.json`` and
  ``diffusion_pytorch_model.safetensors``/``.bin``, or a pipeline folder's ``vae/``),
  converted by the ``"diffusers"`` format of the autoencoder that reads its
  ``_class_name`` (the built-in ``kl``): found through the registry, never imported.

The autoencoder is frozen: eval mode, no gradients, never in the optimizer; a latent run's
checkpoints record only its source and :func:`weights_sha256`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from denoisekit.engine.checkpoint import strip_compile_prefix
from denoisekit.engine.run_folder import open_run
from denoisekit.engine.weights import WEIGHT_FILES, read_weights
from denoisekit.engine.weights_fit import load_fitting
from denoisekit.errors import DenoisekitError, RecipeError
from denoisekit.host.convert import structure_config
from denoisekit.host.registry import Registry

FORMAT = "diffusers"


@attrs.frozen(eq=False)
class LoadedAutoencoder:
    """A frozen autoencoder and where it came from.

    Attributes:
        module: the autoencoder (eval mode, ``requires_grad`` off), on the CPU until moved.
        source: the run folder, checkpoint or diffusers folder it was read from.
        sha256: :func:`weights_sha256` of its weights (``shift``/``scale`` included).
        table: its ``[autoencoder]`` table (``type`` and options), as resolved.
    """

    module: nn.Module
    source: Path
    sha256: str
    table: dict[str, Any]


def weights_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """A hash of a state dict: every tensor's name, dtype, shape and bytes, by name."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def diffusers_model_folder(path: Path) -> Path | None:
    """The folder holding an ``AutoencoderKL``'s config.json: ``path`` or ``path/vae``."""
    for folder in (path, path / "vae"):
        if (folder / "config.json").is_file():
            return folder
    return None


def load_autoencoder(path: Path | str, *, registry: Registry) -> LoadedAutoencoder:
    """Load the autoencoder at ``path`` (see the module docstring), frozen, on the CPU.

    ``registry`` supplies the diffusers converters (a run folder uses its own stored
    plugins).

    Raises:
        RecipeError: one line naming ``latent.autoencoder`` and the path: nothing there,
            a run without an ``[autoencoder]`` table, or weights that do not fit.
    """
    path = Path(path)
    try:
        if not path.exists():
            raise DenoisekitError("no such run folder, checkpoint or AutoencoderKL folder")
        folder = diffusers_model_folder(path) if path.is_dir() else None
        module, table, state = (
            _from_diffusers(folder, registry) if folder is not None else _from_run(path)
        )
    except DenoisekitError as exc:
        raise RecipeError(f"latent.autoencoder: {path}: {exc}") from exc
    module.eval().requires_grad_(False)
    return LoadedAutoencoder(module=module, source=path, sha256=weights_sha256(state), table=table)


def _build(registry: Registry, table: Mapping[str, Any]) -> nn.Module:
    options = {k: v for k, v in table.items() if k != "type"}
    entry = registry.get("autoencoder", str(table.get("type")))
    config = structure_config(entry.spec.config, options)
    return registry.build("autoencoder", entry.name, config)


def _from_run(path: Path) -> tuple[nn.Module, dict[str, Any], dict[str, torch.Tensor]]:
    """An autoencoder run's autoencoder with its sampling (EMA) weights."""
    stored = open_run(path)
    table = stored.data.get("autoencoder")
    if not isinstance(table, dict) or "type" not in table:
        raise DenoisekitError(
            f"the run {stored.folder} has no [autoencoder] table: not an autoencoder run "
            "(train an autoencoder recipe, or name a diffusers AutoencoderKL folder)"
        )
    module = _build(stored.registry, table)
    state = stored.load_state()
    ema = state.get("hooks", {}).get("ema", {}).get("model")  # the EMA hook's state
    weights = strip_compile_prefix(ema if ema is not None else state["model"])
    load_fitting(module, weights, source=str(stored.checkpoint))
    return module, dict(table), module.state_dict()


def _from_diffusers(
    folder: Path, registry: Registry
) -> tuple[nn.Module, dict[str, Any], dict[str, torch.Tensor]]:
    """An ``AutoencoderKL`` folder through the converter of the class it names."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DenoisekitError(f"config.json is not readable JSON ({exc})") from exc
    model_class = config.get("_class_name", "AutoencoderKL")
    converters = [
        e.spec.formats[FORMAT]
        for e in registry.entries("autoencoder")
        if FORMAT in e.spec.formats
        and model_class in getattr(e.spec.formats[FORMAT], "model_classes", ())
    ]
    if not converters:
        raise DenoisekitError(
            f"_class_name = {model_class!r}: no installed autoencoder reads it "
            "(the built-in kl reads AutoencoderKL)"
        )
    weights_path = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    if weights_path is None:
        raise DenoisekitError(f"no {' or '.join(WEIGHT_FILES)} beside config.json")
    try:
        tables, state = converters[0].import_model(config, read_weights(weights_path))
    except DenoisekitError:
        raise
    except Exception as exc:  # a converter's own refusal (UnsupportedLayoutError, ...)
        raise DenoisekitError(f"{type(exc).__name__}: {str(exc).strip()[:300]}") from exc
    module = _build(registry, tables["autoencoder"])
    load_fitting(module, state, source=str(weights_path))
    return module, dict(tables["autoencoder"]), module.state_dict()


def latent_problems(
    recipe: Any, loaded: LoadedAutoencoder, image_shape: tuple[int, int, int] | None
) -> list[tuple[str, str]]:
    """The backbone against the autoencoder's latent shape of the data's images: the
    ``(key path, message)`` problems (none when ``image_shape`` is unknown)."""
    if image_shape is None:
        return []
    try:
        latent = tuple(loaded.module.latent_shape(tuple(image_shape)))
    except ValueError as exc:
        return [("latent.autoencoder", f"{loaded.source}: does not fit the data: {exc}")]
    cfg = recipe.backbone.config
    wanted = (getattr(cfg, "in_channels", None), getattr(cfg, "image_size", None))
    c, h, w = latent
    if wanted[0] in (None, c) and wanted[1] in (None, h) and h == w:
        return []
    shape = "×".join(map(str, image_shape))
    return [
        (
            "backbone",
            f"the autoencoder {loaded.source} makes {c}×{h}×{w} latents of the data's {shape} "
            f"images, but [backbone] takes {wanted[0]}×{wanted[1]}×{wanted[1]}; set "
            f"backbone.in_channels = {c} and backbone.image_size = {h}",
        )
    ]
