"""Other libraries' model files: diffusers model folders in (``denoisekit import-diffusers``)
and out (``denoisekit export-diffusers``).

The core knows where a diffusers folder keeps its files; what they mean belongs to a
backbone's converter, which its spec declares as ``formats={"diffusers": converter}``
(:attr:`denoisekit.ComponentSpec.formats`; docs/interop.md gives the methods):

* ``converter.model_classes``: the ``config.json`` ``_class_name`` values it reads;
* ``converter.import_model(config, scheduler_config_or_None, weights)`` →
  ``(tables, state_dict)``: recipe tables by name (``backbone`` at least) and the weights;
* ``converter.export_model(recipe_dict, state_dict, prediction=...)`` →
  ``(config, scheduler_config, weights)``.

An autoencoder's converter (``formats={"diffusers": ...}`` on an ``autoencoder`` spec, e.g.
``kl``'s for ``AutoencoderKL``) has ``import_model(config, weights)`` → ``(tables,
state_dict)`` and ``export_model(autoencoder_table, state_dict)`` → ``(config, weights)``:
an autoencoder run goes out as a model folder (``config.json`` and the weights, what
``AutoencoderKL.from_pretrained`` reads), and such a folder comes in as an autoencoder run.

Nothing here unpickles (:mod:`denoisekit.engine.weights` reads the weights).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from denoisekit.engine.build import build_run, load_trained
from denoisekit.engine.checkpoint import strip_compile_prefix
from denoisekit.engine.loop import write_run_files
from denoisekit.engine.replace import FolderWriter
from denoisekit.engine.run import Run
from denoisekit.engine.run_folder import StoredRun
from denoisekit.engine.weights import WEIGHT_FILES, load_weights, read_weights
from denoisekit.errors import ComponentError, DenoisekitError
from denoisekit.files import RUN_OUTPUTS, RunPaths, atomic_write, save_safetensors
from denoisekit.host.recipe import recipe_from_data
from denoisekit.host.registry import Registry, load_registry

FORMAT = "diffusers"
SCHEDULER_FILE = "scheduler_config.json"
PIPELINE_FILE = "model_index.json"
#: What ``export-diffusers`` writes in its folder: a diffusers pipeline folder
#: (``DDIMPipeline.from_pretrained(DIR)``), the model in ``unet/``, the scheduler in
#: ``scheduler/``.
EXPORT_FILES = (
    PIPELINE_FILE,
    f"unet/{WEIGHT_FILES[0]}",
    "unet/config.json",
    f"scheduler/{SCHEDULER_FILE}",
)
#: An ``[inpainting]`` run's export writes this in place of ``model_index.json``: no
#: diffusers pipeline samples a pixel-space inpainting ``UNet2DModel`` (``DDIMPipeline``
#: would feed it noise alone), so the folder is its ``unet/`` and ``scheduler/`` and the
#: order of the ``2 C + 1`` input channels (:func:`inpainting_layout`).
INPAINTING_FILE = "inpainting.json"
#: What an export replaces (with ``--overwrite``): its own outputs and 0.1's flat layout,
#: whose ``config.json`` beside the pipeline would be read in place of ``unet/``.
EXPORT_OUTPUTS = (
    PIPELINE_FILE,
    INPAINTING_FILE,
    "unet",
    "scheduler",
    "config.json",
    *WEIGHT_FILES,
    SCHEDULER_FILE,
)
#: The pipeline ``model_index.json`` names for a scheduler class (else ``DDIMPipeline``).
PIPELINES = {"DDIMScheduler": "DDIMPipeline", "DDPMScheduler": "DDPMPipeline"}


# --------------------------------------------------------------------------- files


def _write_json(path: Path, value: Mapping[str, Any]) -> None:
    with atomic_write(path) as handle:
        handle.write((json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DenoisekitError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(value, dict):
        raise DenoisekitError(f"{path}: expected a JSON object")
    return value


def diffusers_files(folder: Path) -> tuple[Path, Path, Path | None]:
    """``(config.json, weights, scheduler config or None)`` of a diffusers model folder:
    ``DIR`` itself or a pipeline's ``DIR/unet``; the scheduler config beside the model,
    or in ``DIR/scheduler`` or ``DIR/../scheduler`` (a pipeline's layout)."""
    if not folder.is_dir():
        raise DenoisekitError(f"{folder}: no such folder")
    model = folder
    if not (folder / "config.json").is_file() and (folder / "unet" / "config.json").is_file():
        model = folder / "unet"
    if not (model / "config.json").is_file():
        raise DenoisekitError(
            f"{folder}: no config.json (nor unet/config.json): not a model folder"
        )
    weights = next((model / n for n in WEIGHT_FILES if (model / n).is_file()), None)
    if weights is None:
        raise DenoisekitError(f"{model}: no {' or '.join(WEIGHT_FILES)}")
    places = [model, folder / "scheduler", model.parent / "scheduler"]
    scheduler = next((p / SCHEDULER_FILE for p in places if (p / SCHEDULER_FILE).is_file()), None)
    return model / "config.json", weights, scheduler


def _converter(
    registry: Registry, name: str | None, model_class: str | None, kind: str = "backbone"
) -> Any:
    """The ``diffusers`` converter of component ``name`` of ``kind``, or of the backbone or
    autoencoder reading ``model_class`` (then ``kind`` is ignored)."""
    if name is not None:
        entry = registry.get(kind, name)
        if FORMAT not in entry.spec.formats:
            raise DenoisekitError(f"{kind} {name!r} has no {FORMAT} format (no converter)")
        return entry.spec.formats[FORMAT]
    entries = [
        e
        for k in ("backbone", "autoencoder")
        for e in registry.entries(k)
        if FORMAT in e.spec.formats
    ]
    for entry in entries:
        if model_class in getattr(entry.spec.formats[FORMAT], "model_classes", ()):
            return entry.spec.formats[FORMAT]
    known = sorted(
        {c for e in entries for c in getattr(e.spec.formats[FORMAT], "model_classes", ())}
    )
    raise DenoisekitError(
        f"_class_name = {model_class!r} is not supported (the installed backbones and "
        f"autoencoders read: {', '.join(known) or 'none'})"
    )


def _call(converter: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """A converter's method; an error that is not a user error is one ComponentError line."""
    try:
        return getattr(converter, method)(*args, **kwargs)
    except DenoisekitError:
        raise
    except Exception as exc:
        raise ComponentError(
            f"{FORMAT} converter {type(converter).__name__}.{method}: "
            f"{type(exc).__name__}: {str(exc).strip()[:300]}"
        ) from exc


# --------------------------------------------------------------------------- import


def placeholder_data(in_channels: int, image_size: int) -> dict[str, Any]:
    """The ``[data]`` of an imported run: ``digits`` for 1×8×8, else an ``image-folder``
    (``images/`` beside the recipe) of the model's image size; change it to fine-tune."""
    if (in_channels, image_size) == (1, 8):
        return {"type": "digits"}
    mode = {1: "L", 3: "RGB"}.get(in_channels)
    if mode is None:
        raise DenoisekitError(f"in_channels = {in_channels}: no image data has this many channels")
    return {"type": "image-folder", "path": "images", "image_size": image_size, "mode": mode}


def import_diffusers(folder: Path, out: Path, *, overwrite: bool = False) -> Run:
    """Write a diffusers model folder as a run folder (its recipe, versions and a last
    checkpoint at step 0, the model's weights also as the EMA weights): a ``UNet2DModel``
    as a diffusion run, an ``AutoencoderKL`` as an autoencoder run. Everything is read,
    converted and loaded into the run before the old content of ``out`` is replaced."""
    with FolderWriter(out, RUN_OUTPUTS, overwrite=overwrite, what="a run") as writer:
        config_path, weights_path, scheduler_path = diffusers_files(folder)
        config = _read_json(config_path)
        scheduler = _read_json(scheduler_path) if scheduler_path is not None else None
        registry = load_registry()
        converter = _converter(registry, None, config.get("_class_name", "UNet2DModel"))
        weights = read_weights(weights_path)
        autoencoder = config.get("_class_name") in _autoencoder_classes(registry)
        arguments = (config, weights) if autoencoder else (config, scheduler, weights)
        try:
            tables, state = _call(converter, "import_model", *arguments)
        except DenoisekitError as exc:
            raise DenoisekitError(f"{folder}: {exc}") from exc
        if autoencoder:  # its images are the model's sample_size (diffusers' default 32)
            table = tables["autoencoder"]
            size = (table.get("in_channels", 3), int(config.get("sample_size", 32)))
        else:
            backbone = tables["backbone"]
            size = (backbone.get("in_channels", 3), backbone.get("image_size", 32))
        data = {
            "name": out.name,
            "description": f"imported from the diffusers model {folder}",
            "data": placeholder_data(*size),
            **tables,
            "hooks": {"ema": {}},
        }
        staging = RunPaths(writer.staged())
        recipe = recipe_from_data(data, registry, source=staging.recipe)
        run = build_run(recipe, out_dir=staging.root, registry=registry, with_data=False)
        load_weights(run, state, sampling=state, source=str(weights_path))
        write_run_files(run)
        run.save_checkpoint(staging.last_checkpoint)
        writer.commit()
    return attrs.evolve(run, out_dir=out)


def _autoencoder_classes(registry: Registry) -> set[str]:
    """The ``_class_name`` values the installed autoencoders' converters read."""
    return {
        c
        for e in registry.entries("autoencoder")
        if FORMAT in e.spec.formats
        for c in getattr(e.spec.formats[FORMAT], "model_classes", ())
    }


# --------------------------------------------------------------------------- export


def export_diffusers(path: StoredRun | Path, out: Path, *, overwrite: bool = False) -> list[Path]:
    """Write a run's sampling (EMA) weights as a diffusers pipeline folder: ``model_index.json``,
    the model in ``unet/`` and a ``DDIMScheduler`` config in ``scheduler/``, so that
    ``DDIMPipeline.from_pretrained(out)`` (or ``DDPMPipeline``) loads it; returns the files
    written. An ``[inpainting]`` run's folder has :data:`INPAINTING_FILE` in place of
    ``model_index.json`` (``UNet2DModel.from_pretrained(out, subfolder="unet")`` loads it).
    ``out``'s old content is replaced only once the new files are complete.

    An autoencoder run is written as a model folder instead: ``config.json`` and
    ``diffusion_pytorch_model.safetensors`` (``AutoencoderKL.from_pretrained(out)``)."""
    with FolderWriter(out, EXPORT_OUTPUTS, overwrite=overwrite, what="an exported model") as writer:
        run = load_trained(path, device="cpu", allow_autoencoder=True)
        if run.recipe.trains_autoencoder:
            names = _export_autoencoder(run, writer.staged())
            writer.commit()
            return [out / name for name in names]
        converter = _converter(run.registry, run.recipe.backbone.type, None)
        model = run.pm.hook.denoisekit_sampling_model(run=run)
        weights = strip_compile_prefix(model.state_dict())
        config, scheduler, theirs = _call(
            converter,
            "export_model",
            run.recipe.to_dict(),
            weights,
            prediction=run.loss.prediction_type,
        )
        inpainting = run.recipe.inpainting.enabled
        names = [INPAINTING_FILE if inpainting else PIPELINE_FILE, *EXPORT_FILES[1:]]
        staging = writer.staged()
        files = [staging / name for name in names]
        for folder in {f.parent for f in files}:
            folder.mkdir(exist_ok=True)
        save_safetensors(files[1], theirs)
        _write_json(files[2], config)
        _write_json(files[3], scheduler)
        if inpainting:
            _write_json(files[0], inpainting_layout(run.image_shape[0], run.recipe.inpainting))
        else:
            _write_json(files[0], pipeline_index(config, scheduler))
        writer.commit()
    return [out / name for name in names]


def inpainting_layout(channels: int, table: Any) -> dict[str, Any]:
    """:data:`INPAINTING_FILE` of an ``[inpainting]`` run of ``channels``-channel images:
    the input channels in order, as its training loop concatenates them."""
    return {
        "in_channels": 2 * channels + 1,
        "out_channels": channels,
        "inputs": [
            {"name": "x_t", "channels": channels, "what": "the noisy image"},
            {
                "name": "masked_image",
                "channels": channels,
                "what": "the clean image in [-1, 1], 0 where the mask is 1",
            },
            {"name": "mask", "channels": 1, "what": "1 = regenerate, 0 = keep"},
        ],
        "note": "diffusers' StableDiffusionInpaintPipeline orders its UNet input [latents, "
        "mask, masked image latents]; this UNet takes [x_t, masked image, mask]",
        "trained_masks": list(table.masks),
        "p_all_unknown": table.p_all_unknown,
    }


def _export_autoencoder(run: Run, staging: Path) -> tuple[str, str]:
    """Write the run's sampling (EMA) autoencoder as a diffusers model folder in ``staging``."""
    autoencoder = run.recipe.autoencoder
    converter = _converter(run.registry, autoencoder.type, None, kind="autoencoder")
    model = run.pm.hook.denoisekit_sampling_model(run=run)
    weights = strip_compile_prefix(model.state_dict())
    table = run.recipe.to_dict()["autoencoder"]
    config, theirs = _call(converter, "export_model", table, weights)
    data = run.recipe.data
    facts = run.registry.get("data", data.type).spec.facts
    shape = (facts(data.config) or {}).get("image_shape") if facts is not None else None
    if shape is not None:  # the images it was trained on (config.json's sample_size)
        config["sample_size"] = int(shape[-1])
    names = ("config.json", WEIGHT_FILES[0])
    save_safetensors(staging / names[1], theirs)
    _write_json(staging / names[0], config)
    return names


def pipeline_index(config: Mapping[str, Any], scheduler: Mapping[str, Any]) -> dict[str, Any]:
    """The ``model_index.json`` of a pipeline of the model ``config`` and ``scheduler``
    config: the pipeline class and each component's ``[library, class]``."""
    scheduler_class = scheduler.get("_class_name", "DDIMScheduler")
    index: dict[str, Any] = {
        "_class_name": PIPELINES.get(scheduler_class, "DDIMPipeline"),
        "scheduler": ["diffusers", scheduler_class],
        "unet": ["diffusers", config.get("_class_name", "UNet2DModel")],
    }
    if "_diffusers_version" in config:
        index["_diffusers_version"] = config["_diffusers_version"]
    return index
