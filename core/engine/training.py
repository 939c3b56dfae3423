"""The training loop and the :class:`Run` it works on.

The loop draws a micro-batch, draws timesteps uniformly and noise, noises the batch,
calls the backbone (through ``denoisekit_train_forward``) and the loss, back-propagates,
steps the optimizer and the learning-rate schedule, and calls the lifecycle hooks. It
knows nothing of EMA, AMP, compile, logging to TensorBoard or checkpoint files: those are
hook components registered into the run's own plugin manager.

Exact resume: a run's :meth:`Run.state_dict` holds the model, optimizer, lr schedule,
step, every random-number generator state, the data order (epoch and position) and
every hook's state, so N steps + resume + N steps equals 2N steps bit for bit on CPU.

Under ``torchrun`` (a :class:`~denoisekit.engine.distributed.DistContext` with several ranks) the
same loop runs on every rank with DistributedDataParallel; :mod:`denoisekit.engine.distributed`
says what is global and what is per rank. A single process takes none of those paths.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import attrs
import pluggy
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from denoisekit import hookimpl, hookspecs
from denoisekit.contracts import Backbone, BackboneConfig, Hook, optional
from denoisekit.denoiser import Denoiser, check_output_shape, eval_mode
from denoisekit.diffusion import q_sample
from denoisekit.engine import distributed
from denoisekit.engine.checkpoint import atomic_write, load_checkpoint, strip_compile_prefix
from denoisekit.engine.distributed import SINGLE, DistContext
from denoisekit.errors import CheckpointError, ComponentError, DataError, OutputError
from denoisekit.host.plugin_manager import hook_problem
from denoisekit.host.recipe import Recipe
from denoisekit.host.registry import Registry

log = logging.getLogger(__name__)


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


# --------------------------------------------------------------------------- data order


class _EpochBatches:
    """Batches of one epoch's permutation, from a given position on (a batch sampler).

    With ``world_size`` ranks each batch is the global one, of which this rank takes the
    ``rank``-th equal slice.
    """

    def __init__(
        self,
        order: list[int],
        batch_size: int,
        drop_last: bool,
        start: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.order, self.batch_size, self.drop_last, self.start = (
            order,
            batch_size,
            drop_last,
            start,
        )
        self.per_rank = batch_size // world_size
        self.offset = rank * self.per_rank

    def _count(self) -> int:
        full, rest = divmod(len(self.order), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __len__(self) -> int:
        return max(0, self._count() - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for b in range(self.start, self._count()):
            lo = b * self.batch_size + self.offset
            yield self.order[lo : lo + self.per_rank]


class BatchStream:
    """An endless, resumable stream of batches on the device.

    Epoch ``e`` visits the dataset in the order of a permutation seeded by
    ``(seed, e)``; the state is ``(epoch, position)``, so a resumed run continues with
    the very batch an uninterrupted run would have drawn.

    Under torchrun, ``batch_size`` is the global (all ranks) batch and each rank yields
    its ``rank``-th slice of ``batch_size / world_size`` images; ``position`` counts
    global batches, so the state means the same on every rank and any world size.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        seed: int,
        device: torch.device,
        drop_last: bool = True,
        num_workers: int = 0,
        pin_memory: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.drop_last = drop_last
        self.num_workers = num_workers
        self.pin_memory = pin_memory and device.type == "cuda"
        self.epoch = 0
        self.position = 0
        self._iterator: Iterator[Any] | None = None
        if batch_size % world_size or not 0 <= rank < world_size:
            raise ValueError(
                f"batch_size {batch_size} must split evenly over {world_size} ranks (rank {rank})"
            )
        if world_size > 1 and not drop_last:
            raise ValueError("several ranks need drop_last=True (equal slices)")
        self.rank, self.world_size = rank, world_size
        n = len(dataset)  # type: ignore[arg-type]
        if n == 0 or (drop_last and n < batch_size):
            raise DataError(
                f"the dataset has {n} images, fewer than one batch of {batch_size}; lower "
                "train.batch_size or set train.drop_last = false"
            )

    def _epoch_generator(self, salt: int) -> torch.Generator:
        seed = (self.seed * 1_000_003 + self.epoch) * 2 + salt
        return torch.Generator().manual_seed(seed % 2**64)  # torch's seeds are 64-bit

    def _worker_generator(self) -> torch.Generator:
        if self.world_size == 1:
            return self._epoch_generator(1)
        # Each rank's workers draw their own augmentations (the order stays shared).
        seed = distributed.derived_seed("workers", self.seed, self.epoch, self.rank)
        return torch.Generator().manual_seed(seed)

    def _start_epoch(self) -> None:
        n = len(self.dataset)  # type: ignore[arg-type]
        order = torch.randperm(n, generator=self._epoch_generator(0)).tolist()
        batches = _EpochBatches(
            order, self.batch_size, self.drop_last, self.position, self.rank, self.world_size
        )
        loader = DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            generator=self._worker_generator(),  # seeds workers' augmentations
        )
        self._iterator = iter(loader)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        while True:
            if self._iterator is None:
                self._start_epoch()
            try:
                images, labels = next(self._iterator)  # type: ignore[arg-type]
            except StopIteration:
                self._iterator = None
                self.epoch += 1
                self.position = 0
                continue
            self.position += 1
            non_blocking = self.pin_memory
            return (
                images.to(self.device, non_blocking=non_blocking),
                torch.as_tensor(labels).to(self.device, non_blocking=non_blocking),
            )

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._iterator = None


# --------------------------------------------------------------------------- the run


@attrs.define(eq=False)
class Run:
    """Everything one training run holds. Hooks read and replace its attributes.

    Attributes:
        train_model: the module the forward pass calls; the compile hook replaces it
            with ``torch.compile(model)``. ``model`` stays the raw module.
        generator: draws timesteps and noise, on the run's device.
        step: optimization steps taken so far.
        last_loss_per_sample / last_t: the last micro-batch's per-sample loss and
            timesteps (detached, on the device), for per-timestep logging (this rank's
            slice under torchrun).
        dist: this process's place under torchrun (:data:`~denoisekit.engine.distributed.SINGLE`
            for one process); see :attr:`rank`, :attr:`world_size`, :attr:`is_main`.
            Under torchrun ``train_model`` is the DistributedDataParallel wrapper.
    """

    recipe: Recipe
    registry: Registry
    pm: pluggy.PluginManager
    device: torch.device
    out_dir: Path
    dataset: Any  # None in a run built for sampling only
    model: nn.Module
    train_model: nn.Module
    schedule: Any
    loss_fn: Any
    denoiser: Denoiser
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    sampler: Any
    batches: BatchStream | None  # None in a run built for sampling only
    generator: torch.Generator
    hooks: dict[str, Any]
    step: int = 0
    last_loss_per_sample: torch.Tensor | None = None
    last_t: torch.Tensor | None = None
    grad_norm: torch.Tensor | None = None
    dist: DistContext = SINGLE

    @property
    def rank(self) -> int:
        """This process's rank (0 in a single process)."""
        return self.dist.rank

    @property
    def world_size(self) -> int:
        """The number of processes training together (1 in a single process)."""
        return self.dist.world_size

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that logs and writes files."""
        return self.dist.is_main

    @property
    def total_steps(self) -> int:
        return self.recipe.train.steps

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images: the data's, or the backbone config's without data."""
        if self.dataset is not None:
            return tuple(self.dataset.image_shape)  # type: ignore[return-value]
        cfg = self.recipe.backbone.config
        return (cfg.in_channels, cfg.image_size, cfg.image_size)

    @property
    def num_classes(self) -> int | None:
        return optional(self.model, Backbone, "num_classes")

    def clip_gradients(self) -> None:
        """Clip the gradients' total norm to ``train.grad_clip`` when it is set, keeping the
        norm before clipping in ``grad_norm`` (a device tensor: no host sync)."""
        clip = self.recipe.train.grad_clip
        if clip is not None:
            self.grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)

    def optimizer_step_skipped(self) -> bool:
        """Whether a plugin (the float16 AMP hook's GradScaler) skipped the last optimizer
        step, from :func:`~denoisekit.hookspecs.denoisekit_optimizer_step_skipped` (one
        host sync where a plugin answers)."""
        answers = self.pm.hook.denoisekit_optimizer_step_skipped(run=self)
        return any(bool(skipped) for skipped in answers if skipped is not None)

    def sampling_denoiser(self) -> Denoiser:
        """The denoiser over the sampling weights (EMA where the hook is on)."""
        model = self.pm.hook.denoisekit_sampling_model(run=self)
        return Denoiser(model, self.schedule, self.loss_fn.prediction_type, name=self.denoiser.name)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | list[torch.Generator],
        sampler: Any = None,
        x_T: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Draw ``n`` images in [-1, 1] with the run's (or the given) sampler."""
        denoiser = self.sampling_denoiser()
        with eval_mode(denoiser.model):
            return (sampler or self.sampler).sample(
                denoiser,
                (n, *self.image_shape),
                generator=generator,
                device=self.device,
                cond=cond,
                x_T=x_T,
            )

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (see the module docstring)."""
        hook_state: dict[str, Any] = {}
        for part in self.pm.hook.denoisekit_state_dict(run=self):
            if part:
                hook_state.update(part)
        rng: dict[str, Any] = {
            "generator": self.generator.get_state(),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "step": self.step,
            "model": strip_compile_prefix(self.model.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "rng": rng,
            "data": self.batches.state_dict() if self.batches is not None else None,
            "hooks": hook_state,
            "recipe": self.recipe.to_toml(),
            "versions": versions(self.registry),
        }

    def load_state_dict(
        self, state: dict[str, Any], *, source: str = "checkpoint", weights_only: bool = False
    ) -> None:
        """Restore a :meth:`state_dict` (a checkpoint) into this run.

        ``weights_only`` restores the model and the hooks' state (EMA) alone: enough to
        sample or evaluate.
        """
        try:
            self.model.load_state_dict(strip_compile_prefix(state["model"]))
            self.step = int(state["step"])
            if not weights_only:
                self.optimizer.load_state_dict(state["optimizer"])
                self.lr_scheduler.load_state_dict(state["lr_scheduler"])
                if self.batches is not None:
                    self.batches.load_state_dict(state["data"])
                rng = state["rng"]
                self.generator.set_state(rng["generator"])
                torch.set_rng_state(rng["torch"])
                if "cuda" in rng and torch.cuda.is_available():
                    torch.cuda.set_rng_state_all(rng["cuda"])
                distributed.seed_per_rank(self.recipe.seed, self.step, self.dist)
            self.pm.hook.denoisekit_load_state_dict(run=self, state=state.get("hooks", {}))
        except (KeyError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise CheckpointError(
                f"{source}: does not match this recipe's run ({type(exc).__name__}: {first[:200]})"
            ) from exc


def versions(registry: Registry) -> dict[str, Any]:
    """Versions of python, torch, denoisekit and every loaded plugin, for run metadata."""
    from denoisekit import __version__

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # TorchVersion does not load with weights_only
        "denoisekit": __version__,
        "plugins": dict(sorted(registry.plugins.items())),
    }


# --------------------------------------------------------------------------- defaults


class CoreDefaults:
    """The core's default implementations of the overridable run hooks (``trylast``)."""

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


class MetricsFile:
    """Appends every logged scalar dict to ``metrics.jsonl`` in the run folder."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @hookimpl(trylast=True)
    def denoisekit_log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        try:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, **scalars}) + "\n")
        except OSError as exc:  # a full disk: one line, the checkpoints stay
            raise OutputError(f"{self.path}: cannot append ({exc.strerror or exc})") from exc


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
    file-writing hooks (:data:`~denoisekit.engine.distributed.RANK_ZERO_HOOKS`, or any hook with
    ``rank_zero_only = True``) and ``metrics.jsonl`` on rank 0 only.
    """
    if registry is None:
        from denoisekit.engine.components import load_components

        registry = load_components(recipe)
    out_dir = Path(out_dir)
    train_cfg = recipe.train
    dist = dist if dist is not None else distributed.current()
    device = distributed.place(resolve_device(train_cfg.device), dist)
    if with_data:
        distributed.check_train_config(train_cfg, dist)
    torch.manual_seed(recipe.seed)

    def build(kind: str, **context: Any) -> Any:
        choice = recipe.component(kind)
        return registry.build(kind, choice.type, choice.config, **context)

    dataset = build("data", root=recipe.root, train=True) if with_data else None
    schedule = build("schedule")
    model = build("backbone").to(device)
    if dataset is not None:
        _check_backbone_fits_data(recipe, model, dataset)
    loss_fn = build("loss", schedule=schedule)
    optimizer = build("optimizer", params=model.parameters(), device=device)
    lr_scheduler = build("lr_schedule", optimizer=optimizer, total_steps=train_cfg.steps)
    sampler = build("sampler")
    batches = None
    if dataset is not None:
        batches = BatchStream(
            dataset,
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
    pm.register(CoreDefaults(), name="core:defaults")
    if dist.is_main:
        pm.register(MetricsFile(out_dir / "metrics.jsonl"), name="core:metrics-file")
    hooks: dict[str, Any] = {}
    to_register: list[tuple[Any, str, str]] = []  # (hook, name, how errors name it)
    for name, choice in recipe.hooks.items():
        hook = registry.build("hook", choice.type, choice.config)
        if not dist.is_main and _rank_zero_only(choice.type, hook):
            continue
        label = f"{registry.get('hook', choice.type).label} ([hooks.{name}])"
        to_register.append((hook, f"hook:{name}", label))
        hooks[name] = hook
    for i, hook in enumerate(extra_hooks):
        to_register.append((hook, f"extra:{i}", f"extra hook {type(hook).__name__} (#{i})"))
    _register_hooks(pm, to_register)
    out_dir.mkdir(parents=True, exist_ok=True)  # only once every component is built

    run = Run(
        recipe=recipe,
        registry=registry,
        pm=pm,
        device=device,
        out_dir=out_dir,
        dataset=dataset,
        model=model,
        train_model=model,
        schedule=schedule,
        loss_fn=loss_fn,
        denoiser=Denoiser(
            model, schedule, loss_fn.prediction_type, name=_backbone_label(recipe, registry, model)
        ),
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        sampler=sampler,
        batches=batches,
        generator=generator,
        hooks=hooks,
        dist=dist,
    )
    pm.hook.denoisekit_configure.call_historic(kwargs={"run": run})
    if dist.enabled and batches is not None:
        # After configure: DDP wraps whatever the hooks made of train_model (compile).
        run.train_model = distributed.wrap_model(run.train_model, dist, device)
    return run


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


def _rank_zero_only(type_name: str, hook: Any) -> bool:
    flag = optional(hook, Hook, "rank_zero_only")
    if flag is not None:
        return bool(flag)
    return type_name in distributed.RANK_ZERO_HOOKS


def _check_backbone_fits_data(recipe: Recipe, model: nn.Module, dataset: Any) -> None:
    """The backbone's channels and size must match the data's images."""
    c, h, w = dataset.image_shape
    cfg = recipe.backbone.config
    expected_c = optional(cfg, BackboneConfig, "in_channels") or c
    expected_size = optional(cfg, BackboneConfig, "image_size") or h
    if expected_c != c or expected_size != h or h != w:
        where = f"{recipe.path}: " if recipe.path is not None else ""
        raise DataError(
            f"{where}the data gives {c}×{h}×{w} images but the backbone expects "
            f"{expected_c}×{expected_size}×{expected_size}; set backbone.in_channels = {c} and "
            f"backbone.image_size = {h} (or resize the data)"
        )


def write_run_files(run: Run) -> None:
    """The resolved recipe and the versions, in the run folder (atomic writes)."""
    texts = {
        "recipe.toml": run.recipe.to_toml(),
        "versions.json": json.dumps(versions(run.registry), indent=2) + "\n",
    }
    for name, text in texts.items():
        with atomic_write(run.out_dir / name) as handle:
            handle.write(text.encode("utf-8"))


# --------------------------------------------------------------------------- the loop


class TrainingInterrupted(KeyboardInterrupt):
    """Raised inside the loop on SIGTERM (Ctrl-C raises KeyboardInterrupt itself)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"received signal {signal.Signals(signum).name}")
        self.signum = signum


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise TrainingInterrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def resume_from(run: Run, checkpoint: Path | str) -> None:
    """Load a checkpoint into the run (model, optimizer, data order, RNG, hooks)."""
    state = load_checkpoint(checkpoint, map_location=run.device)
    run.load_state_dict(state, source=str(checkpoint))
    log.info("resumed from %s at step %d", checkpoint, run.step)


def train(run: Run) -> Run:
    """Train until ``recipe.train.steps`` optimization steps have been taken.

    Calls ``denoisekit_train_start`` once, then per step the forward, backward and
    optimizer hooks and ``denoisekit_train_step_end``; ``denoisekit_train_end`` at the
    end, or ``denoisekit_train_error`` (then re-raises) on an exception or interrupt.
    """
    hook = run.pm.hook
    cfg = run.recipe.train
    if run.batches is None:
        raise ValueError("this run was built with_data=False: it can sample, not train")
    if run.is_main:
        write_run_files(run)
    run.model.train()
    with _sigterm_raises():
        hook.denoisekit_train_start(run=run)
        try:
            _loop(run, cfg)
        except BaseException as error:
            hook.denoisekit_train_error(run=run, error=error)
            raise
        hook.denoisekit_train_end(run=run)
    return run


def _no_sync_unless(run: Run, sync: bool) -> AbstractContextManager[Any]:
    """DDP's ``no_sync()`` for all but the last micro-batch of a step (one all-reduce)."""
    no_sync = getattr(run.train_model, "no_sync", None)
    if sync or not run.dist.enabled or no_sync is None:
        return nullcontext()
    return no_sync()


def _loop(run: Run, cfg: Any) -> None:
    hook = run.pm.hook
    num_timesteps = run.schedule.num_timesteps
    world_size = run.world_size
    loss_sum = torch.zeros((), device=run.device)
    steps_since_log = 0
    shape_checked = False  # the backbone's output shape, on the first micro-batch only
    tick = time.perf_counter()
    while run.step < cfg.steps:
        run.optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=run.device)
        for micro in range(cfg.grad_accum):
            x0, labels = next(run.batches)
            # Notation: x0 clean images, t ~ U{0..T-1}, eps ~ N(0, I), x_t = q_sample(x0, t, eps).
            # Under torchrun t and eps are drawn for the global micro-batch (generators
            # stay equal on all ranks) and each rank keeps its slice of the images.
            n = x0.shape[0] * world_size
            t = torch.randint(0, num_timesteps, (n,), device=run.device, generator=run.generator)
            noise = torch.randn(
                (n, *x0.shape[1:]), device=run.device, generator=run.generator, dtype=x0.dtype
            )
            if world_size > 1:
                mine = distributed.rank_slice(n, run.dist)
                t, noise = t[mine], noise[mine]
            with _no_sync_unless(run, micro == cfg.grad_accum - 1):
                x_t = q_sample(run.schedule, x0, t, noise)
                cond = labels if run.num_classes else None
                output = hook.denoisekit_train_forward(
                    run=run, x_t=x_t, t=run.denoiser.model_time(t), cond=cond
                )
                if not shape_checked:  # before the loss can broadcast it, or fail on it
                    check_output_shape(output, x_t, run.denoiser.name)
                    shape_checked = True
                per_sample = run.loss_fn(output.float(), x0=x0, noise=noise, t=t)
                loss = per_sample.mean()
                hook.denoisekit_backward(run=run, loss=loss / cfg.grad_accum)
            step_loss += loss.detach()
            run.last_loss_per_sample, run.last_t = per_sample.detach(), t
        hook.denoisekit_optimizer_step(run=run)
        run.lr_scheduler.step()
        run.step += 1
        step_loss /= cfg.grad_accum
        # The global mean loss on every rank (a scalar, asynchronous on NCCL): every hook
        # sees the same loss, so a NaN on any rank stops every rank alike (NaN guard) and
        # rank 0 never checkpoints weights a NaN gradient from another rank reached.
        distributed.all_reduce_mean_(step_loss, run.dist)
        loss_sum += step_loss
        steps_since_log += 1
        hook.denoisekit_train_step_end(run=run, step=run.step, loss=step_loss)
        if run.step % cfg.log_every == 0 or run.step == cfg.steps:
            now = time.perf_counter()
            scalars = {
                "loss": (loss_sum / steps_since_log).item(),
                "lr": float(run.optimizer.param_groups[0]["lr"]),
                "images_per_sec": steps_since_log * cfg.batch_size / max(now - tick, 1e-9),
            }
            norm = run.grad_norm
            if norm is None:
                grads = [p.grad for p in run.model.parameters() if p.grad is not None]
                norm = torch.nn.utils.get_total_norm(grads) if grads else None
            if norm is not None and math.isfinite(value := float(norm)):
                scalars["grad_norm"] = value
            hook.denoisekit_log_scalars(run=run, step=run.step, scalars=scalars)
            loss_sum.zero_()
            steps_since_log = 0
            tick = time.perf_counter()
