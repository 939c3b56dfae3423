"""Building a :class:`~denoisekit.engine.run.Run`: from a recipe (:func:`build_run`) or from
a checkpoint's own recipe (:func:`load_trained`), and the core's default hook
implementations every run manager holds (:class:`CoreDefaults`).
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pluggy
import torch
from torch import nn

from denoisekit import hookimpl, hookspecs
from denoisekit.contracts import BackboneConfig, Hook, optional
from denoisekit.denoiser import PIXEL_RANGE, Denoiser
from denoisekit.engine import distributed
from denoisekit.engine.autoencoder_loop import Calibration, ReconstructionPass
from denoisekit.engine.autoencoder_run import NOT_DIFFUSION, AutoencoderRun
from denoisekit.engine.batches import BatchStream
from denoisekit.engine.components import load_components
from denoisekit.engine.distributed import DistContext
from denoisekit.engine.latent_space import open_latent_space
from denoisekit.engine.patch_gan import PatchDiscriminator
from denoisekit.engine.run import Run, TrainingState
from denoisekit.engine.run_folder import MetricsFile, StoredRun, open_run
from denoisekit.errors import ComponentError, DataError, DenoisekitError
from denoisekit.files import RunPaths
from denoisekit.host.plugin_manager import hook_problem
from denoisekit.host.recipe import Recipe
from denoisekit.host.registry import Registry


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else as torch reads it.

    Raises:
        DataError: a name torch does not read, or a CUDA device this machine lacks.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DataError(
            f"train.device = {name!r} is not a device name; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"train.device = {name!r}, but CUDA is not available; use 'auto' or 'cpu'")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise DataError(
            f"train.device = {name!r}, but this machine has {torch.cuda.device_count()} CUDA "
            "device(s), numbered from 0"
        )
    return device


# --------------------------------------------------------------------------- defaults


class CoreDefaults:
    """The core's default implementations of the overridable run hooks (``trylast``)."""

    @hookimpl(trylast=True)
    def denoisekit_train_model(self, model: nn.Module) -> nn.Module:
        return model

    @hookimpl(trylast=True)
    def denoisekit_train_forward(
        self, run: Run, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None
    ) -> torch.Tensor:
        return run.train_model(x_t, t, cond)

    @hookimpl(trylast=True)
    def denoisekit_backward(self, loss: torch.Tensor) -> bool:
        loss.backward()
        return True

    @hookimpl(trylast=True)
    def denoisekit_optimizer_step(self, run: Run) -> bool:
        run.clip_gradients()
        run.optimizer.step()
        return True

    @hookimpl(trylast=True)
    def denoisekit_sampling_model(self, run: Run) -> nn.Module:
        return run.model


class AutoencoderDefaults(CoreDefaults):
    """:class:`CoreDefaults` of an autoencoder run: the training forward is
    ``run.train_model(x, generator)`` (a :class:`ReconstructionPass`)."""

    @hookimpl(trylast=True)
    def denoisekit_train_forward(self, run: Run, x_t: torch.Tensor) -> Any:
        return run.train_model(x_t, run.state.generator)


# --------------------------------------------------------------------------- building


def build_run(
    recipe: Recipe,
    *,
    out_dir: Path | str,
    registry: Registry | None = None,
    extra_hooks: Iterable[Any] = (),
    with_data: bool = True,
    dist: DistContext | None = None,
) -> Run:
    """Build every component of a recipe into a :class:`Run` (nothing trained yet).

    ``with_data=False`` builds a run for sampling and evaluation only: no dataset, no
    batch stream (the image shape comes from the backbone's config).

    ``dist`` (default: :func:`denoisekit.engine.distributed.current`, the initialized process
    group if any) places the run on this rank: ``cuda:LOCAL_RANK``, this rank's slice of
    the data, DistributedDataParallel around the training model (with data), and the
    file-writing hooks (those declaring ``rank_zero_only = True``) and the metrics file on
    rank 0 only.

    The training model is ``denoisekit_train_model``'s answer (after ``denoisekit_configure``;
    the compile hook answers), wrapped in DistributedDataParallel under torchrun.
    """
    if registry is None:
        registry = load_components(recipe)
    out_dir = Path(out_dir)
    train_cfg = recipe.train
    dist = dist if dist is not None else distributed.current()
    if dist.enabled and recipe.trains_autoencoder:
        raise DenoisekitError(
            f"{recipe.path or recipe.name}: an autoencoder recipe trains in one process; run "
            "it without torchrun"
        )
    device = distributed.place(resolve_device(train_cfg.device), dist)
    if with_data:
        distributed.check_train_config(train_cfg, dist)
    torch.manual_seed(recipe.seed)

    def build(kind: str, **context: Any) -> Any:
        choice = recipe.component(kind)
        return registry.build(kind, choice.type, choice.config, **context)

    latent = None
    if recipe.latent is not None:  # the frozen autoencoder; batches: its cached posteriors
        with torch.random.fork_rng(devices=[]):  # the weights' init: as if cached before
            latent, data, batch_source = open_latent_space(
                recipe, registry, device, with_data=with_data
            )
    else:
        data = build("data", root=recipe.root, train=True) if with_data else None
        batch_source = data
    if recipe.trains_autoencoder:
        parts = _autoencoder_parts(recipe, registry, build, device)
    else:
        parts = _diffusion_parts(recipe, registry, build, device, data, latent)
    model = parts["model"]
    batches = None
    if batch_source is not None:
        batches = BatchStream(
            batch_source,
            batch_size=train_cfg.batch_size // train_cfg.grad_accum,
            seed=recipe.seed,
            device=device,
            drop_last=train_cfg.drop_last,
            num_workers=train_cfg.num_workers,
            pin_memory=train_cfg.pin_memory,
            rank=dist.rank,
            world_size=dist.world_size,
        )
    generator = torch.Generator(device=device).manual_seed(recipe.seed)
    distributed.seed_per_rank(recipe.seed, 0, dist)

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if recipe.trains_autoencoder:
        pm.register(AutoencoderDefaults(), name="core:defaults")
        pm.register(Calibration(), name="core:calibration")
    else:
        pm.register(CoreDefaults(), name="core:defaults")
    if dist.is_main:
        pm.register(MetricsFile(RunPaths(out_dir).metrics), name="core:metrics-file")
    hooks: dict[str, Any] = {}
    to_register: list[tuple[Any, str, str]] = []  # (hook, name, how errors name it)
    for name, choice in recipe.hooks.items():
        hook = registry.build("hook", choice.type, choice.config)
        if not dist.is_main and optional(hook, Hook, "rank_zero_only"):
            continue
        label = f"{registry.get('hook', choice.type).label} ([hooks.{name}])"
        to_register.append((hook, f"hook:{name}", label))
        hooks[name] = hook
    for i, hook in enumerate(extra_hooks):
        to_register.append((hook, f"extra:{i}", f"extra hook {type(hook).__name__} (#{i})"))
    _register_hooks(pm, to_register)
    out_dir.mkdir(parents=True, exist_ok=True)  # only once every component is built

    run_class = AutoencoderRun if recipe.trains_autoencoder else Run
    run = run_class(
        recipe=recipe,
        registry=registry,
        pm=pm,
        device=device,
        out_dir=out_dir,
        data=data,
        batches=batches,
        hooks=types.MappingProxyType(hooks),
        state=TrainingState(train_model=model, generator=generator),
        dist=dist,
        latent=latent,
        **parts,
    )
    pm.hook.denoisekit_configure.call_historic(kwargs={"run": run})
    trained = ReconstructionPass(model) if recipe.trains_autoencoder else model
    train_model = pm.hook.denoisekit_train_model(run=run, model=trained)
    if dist.enabled and batches is not None:
        train_model = distributed.wrap_model(train_model, dist, device)
    run.state.train_model = train_model
    return run


def _diffusion_parts(
    recipe: Recipe,
    registry: Registry,
    build: Any,
    device: torch.device,
    data: Any,
    latent: Any,
) -> dict[str, Any]:
    """The diffusion run's model, schedule, loss, optimizer, lr schedule, sampler and
    denoiser, built in this order (the order draws the initial weights). A latent run's
    denoiser has no data range (latents are not clamped)."""
    schedule = build("schedule")
    model = build("backbone").to(device)
    if data is not None and latent is None:
        _check_backbone_fits_data(recipe, model, data)
    loss = build("loss", schedule=schedule)
    optimizer = build("optimizer", params=model.parameters(), device=device)
    lr_schedule = build("lr_schedule", optimizer=optimizer, total_steps=recipe.train.steps)
    sampler = build("sampler")
    label = _backbone_label(recipe, registry, model)
    return {
        "model": model,
        "schedule": schedule,
        "loss": loss,
        "optimizer": optimizer,
        "lr_schedule": lr_schedule,
        "sampler": sampler,
        "denoiser": Denoiser(
            model,
            schedule,
            loss.prediction_type,
            name=label,
            data_range=None if latent is not None else PIXEL_RANGE,
        ),
    }


def _autoencoder_parts(
    recipe: Recipe, registry: Registry, build: Any, device: torch.device
) -> dict[str, Any]:
    """An autoencoder run's model (the autoencoder), optimizer and lr schedule, and its
    patch discriminator with its own optimizer (the recipe's, at its base learning rate)."""
    model = build("autoencoder").to(device)
    cfg = recipe.autoencoder_training
    discriminator = disc_optimizer = None
    if cfg.discriminator:
        channels = recipe.autoencoder.config.in_channels
        discriminator = PatchDiscriminator(
            channels, channels=cfg.disc_channels, layers=cfg.disc_layers
        ).to(device)
    optimizer = build("optimizer", params=model.parameters(), device=device)
    lr_schedule = build("lr_schedule", optimizer=optimizer, total_steps=recipe.train.steps)
    if discriminator is not None:
        disc_optimizer = build("optimizer", params=discriminator.parameters(), device=device)
    nothing = dict.fromkeys(("schedule", "loss", "sampler", "denoiser"))
    return {
        "model": model,
        "optimizer": optimizer,
        "lr_schedule": lr_schedule,
        "discriminator": discriminator,
        "disc_optimizer": disc_optimizer,
        **nothing,
    }


def _register_hooks(pm: pluggy.PluginManager, hooks: list[tuple[Any, str, str]]) -> None:
    """Register ``(hook, name, label)``s; a hook pluggy rejects is one error naming it."""
    labels = {id(hook): label for hook, _, label in hooks}
    try:
        for hook, name, _ in hooks:
            pm.register(hook, name=name)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        label = labels.get(id(exc.plugin), repr(exc.plugin))
        raise ComponentError(f"{label}: {hook_problem(exc)}") from exc


def _backbone_label(recipe: Recipe, registry: Registry, model: nn.Module) -> str:
    """How errors name the backbone: the recipe file, the type, the class and the plugin."""
    entry = registry.get("backbone", recipe.backbone.type)
    where = f"{recipe.path}: " if recipe.path is not None else ""
    return (
        f"{where}backbone {entry.name!r} ({type(model).__name__}, plugin {entry.plugin!r} "
        f"({entry.source}))"
    )


def _check_backbone_fits_data(recipe: Recipe, model: nn.Module, data: Any) -> None:
    """The backbone's channels and size must match the data's images."""
    c, h, w = data.image_shape
    cfg = recipe.backbone.config
    channels = 2 * c + 1 if recipe.inpainting.enabled else c  # [x_t, masked image, mask]
    expected_c = optional(cfg, BackboneConfig, "in_channels") or channels
    expected_size = optional(cfg, BackboneConfig, "image_size") or h
    if expected_c != channels or expected_size != h or h != w:
        where = f"{recipe.path}: " if recipe.path is not None else ""
        raise DataError(
            f"{where}the data gives {c}×{h}×{w} images but the backbone expects "
            f"{expected_c}×{expected_size}×{expected_size}; set backbone.in_channels = {c} and "
            f"backbone.image_size = {h} (or resize the data)"
        )


# --------------------------------------------------------------------------- from a checkpoint


def load_trained(
    run: StoredRun | Path | str,
    *,
    overrides: Sequence[str] = (),
    device: str | None = None,
    with_data: bool = False,
    dist: distributed.DistContext | None = None,
    allow_autoencoder: bool = False,
) -> Run:
    """Build a run from a stored run's own recipe and load its weights (EMA included).

    Args:
        run: a run opened with :func:`~denoisekit.engine.run_folder.open_run` (its plugins
            as the user trusted them), or a run folder or checkpoint (opened without trust).
        overrides: ``--set`` overrides of the stored recipe (e.g. ``sampler.steps=20``);
            only sampling options make sense here: the weights are fixed.
        device: run on this device instead of the recipe's ``train.device``.
        with_data: also build the training data (evaluation against it).
        dist: this rank under torchrun (default: the initialized process group, if any):
            the run goes to its ``cuda:LOCAL_RANK``.
        allow_autoencoder: also load an autoencoder run (an
            :class:`~denoisekit.engine.autoencoder_run.AutoencoderRun`); otherwise one is a
            one-line error (it samples nothing).
    """
    stored = run if isinstance(run, StoredRun) else open_run(run)
    recipe = stored.recipe(overrides, device=device)
    if recipe.trains_autoencoder and not allow_autoencoder:
        raise DenoisekitError(f"{stored.checkpoint}: {NOT_DIFFUSION}")
    state = stored.load_state()
    built = build_run(
        recipe, out_dir=stored.folder, registry=stored.registry, with_data=with_data, dist=dist
    )
    built.load_state_dict(state, source=str(stored.checkpoint), weights_only=True)
    return built
