"""The :class:`Run`: a frozen record of one run's built components, and its training state.

The record (recipe, model, schedule, loss, optimizer, ...) is fixed once
:func:`~denoisekit.engine.build.build_run` made it; what changes while training (the
step, the generator of timesteps and noise, the gradient norm) lives in
:class:`TrainingState`, ``run.state``. Hooks see the run through the
:class:`denoisekit.hookspecs.Run` Protocol, which this class satisfies: they read it and
call its services (sampling, evaluation, checkpoint files), never replace its parts.

Exact resume: :meth:`Run.state_dict` holds the model, optimizer, lr schedule, step, every
random-number generator state (:func:`rng_state`), the data order and every hook's
state, so N steps + resume + N steps equals 2N steps bit for bit on CPU.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pluggy
import torch
from torch import nn

from denoisekit import files
from denoisekit.contracts import Backbone, optional
from denoisekit.denoiser import Denoiser, eval_mode
from denoisekit.deprecation import renamed_attributes
from denoisekit.diffusion import randn
from denoisekit.engine import checkpoint, distributed, evaluation, sampling
from denoisekit.engine.batches import BatchStream
from denoisekit.engine.distributed import SINGLE, DistContext
from denoisekit.engine.inpainting import ConditionedModel
from denoisekit.engine.run_folder import RECIPE_FOLDER_KEY, recipe_folder_record
from denoisekit.engine.steering import GuidedDenoiser
from denoisekit.engine.weights_fit import load_fitting
from denoisekit.errors import CheckpointError
from denoisekit.files import RunPaths
from denoisekit.host.recipe import Recipe
from denoisekit.host.registry import Registry

if TYPE_CHECKING:
    from denoisekit.engine.latent_space import LatentSpace


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """The states of ``generator`` (timesteps and noise), torch's global CPU generator
    (dropout) and, once CUDA is in use, the CUDA generators: small host copies, no sync."""
    state: dict[str, Any] = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(generator: torch.Generator, state: Mapping[str, Any]) -> None:
    """Restore an :func:`rng_state` (the CUDA part where it was captured and CUDA is here)."""
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@attrs.define(eq=False)
class TrainingState:
    """What changes while a run trains.

    Attributes:
        train_model: the module the forward pass calls: ``run.model``, or what
            ``denoisekit_train_model`` made of it (compile), wrapped in
            DistributedDataParallel under torchrun. Set by the engine only.
        generator: draws timesteps and noise, on the run's device.
        step: optimization steps taken so far.
        grad_norm: the last clipped step's gradient norm before clipping (a device tensor).
        eval_reference: the evaluation reference data, built on first use.
    """

    train_model: nn.Module
    generator: torch.Generator
    step: int = 0
    grad_norm: torch.Tensor | None = None
    eval_reference: Any = None


#: The checkpoint key of a latent run's autoencoder record (its source and weights hash).
LATENT_KEY = "latent"

#: The run's parts 0.2.0 renamed: old attribute → new (answered until 0.3.0).
RENAMED = {"dataset": "data", "loss_fn": "loss", "lr_scheduler": "lr_schedule"}


@attrs.frozen(eq=False)
class Run:
    """One run's built components (fixed) and its :class:`TrainingState` (``state``).

    ``data`` and ``batches`` are None in a run built for sampling only; ``dist`` places
    the run under torchrun (:data:`~denoisekit.engine.distributed.SINGLE` for one process);
    ``latent`` is a latent run's latent space (the backbone learns and samples latents,
    which :meth:`sample` decodes).
    """

    recipe: Recipe
    registry: Registry
    pm: pluggy.PluginManager
    device: torch.device
    out_dir: Path
    data: Any
    model: nn.Module
    schedule: Any
    loss: Any
    optimizer: torch.optim.Optimizer
    lr_schedule: Any
    sampler: Any
    denoiser: Denoiser
    batches: BatchStream | None
    hooks: Mapping[str, Any]
    state: TrainingState
    dist: DistContext = SINGLE
    latent: LatentSpace | None = None  # [latent]: the frozen autoencoder; None: pixel space

    @property
    def paths(self) -> RunPaths:
        """Every path of the run folder."""
        return RunPaths(self.out_dir)

    @property
    def step(self) -> int:
        """Optimization steps taken so far."""
        return self.state.step

    @property
    def train_model(self) -> nn.Module:
        """The module the training forward pass calls (see :class:`TrainingState`)."""
        return self.state.train_model

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
        if self.data is not None:
            return tuple(self.data.image_shape)  # type: ignore[return-value]
        if self.latent is not None:
            return self.latent.image_shape  # type: ignore[return-value]
        cfg = self.recipe.backbone.config
        channels = cfg.out_channels if self.recipe.inpainting.enabled else cfg.in_channels
        return (channels, cfg.image_size, cfg.image_size)

    @property
    def num_classes(self) -> int | None:
        return optional(self.model, Backbone, "num_classes")

    __getattr__ = renamed_attributes("run", RENAMED)  # 0.1's names, until 0.3.0

    # ------------------------------------------------------------------ training services

    def clip_gradients(self) -> None:
        """Clip the gradients' total norm to ``train.grad_clip`` when it is set, keeping the
        norm before clipping in ``state.grad_norm`` (a device tensor: no host sync)."""
        clip = self.recipe.train.grad_clip
        if clip is not None:
            self.state.grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)

    def optimizer_step_skipped(self) -> bool:
        """Whether a plugin (the float16 AMP hook's GradScaler) skipped the last optimizer
        step, from ``denoisekit_optimizer_step_skipped`` (one host sync where one answers)."""
        answers = self.pm.hook.denoisekit_optimizer_step_skipped(run=self)
        return any(bool(skipped) for skipped in answers if skipped is not None)

    # ------------------------------------------------------------------ sampling

    def sampling_denoiser(self) -> Denoiser:
        """The denoiser over the sampling weights (EMA where the hook is on), with the
        recipe's classifier-free guidance."""
        model = self.pm.hook.denoisekit_sampling_model(run=self)
        if self.recipe.inpainting.enabled:  # all-unknown until an edit conditions it
            model = ConditionedModel(model, scale=self.recipe.inpainting.guidance)
        guidance = self.recipe.guidance
        names = {"name": self.denoiser.name, "data_range": self.denoiser.data_range}
        if guidance.scale != 1 and self.num_classes:
            return GuidedDenoiser(
                model,
                self.schedule,
                self.loss.prediction_type,
                scale=guidance.scale,
                rescale=guidance.rescale,
                interval=guidance.interval,
                **names,
            )
        return Denoiser(model, self.schedule, self.loss.prediction_type, **names)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | list[torch.Generator],
        sampler: Any = None,
        x_T: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        callback: Any = None,
    ) -> torch.Tensor:
        """Draw ``n`` images in [-1, 1] with the run's (or the given) sampler, from ``x_T``
        or from float32 noise drawn with ``generator`` (one, or one per image). A latent
        run samples latents (``x_T`` of the latent shape) and decodes them; its
        ``callback`` sees the decoded ``x0`` estimates."""
        space = self.latent
        if x_T is None:
            shape = self.image_shape if space is None else space.shape
            x_T = randn((n, *shape), generator, device=self.device)
        if space is not None and callback is not None:
            inner = callback
            callback = lambda info: inner({**info, "x0": space.decode(info["x0"])})  # noqa: E731
        denoiser = self.sampling_denoiser()
        with eval_mode(denoiser.model):
            out = (sampler or self.sampler).sample(
                denoiser, x_T.to(self.device), generator=generator, cond=cond, callback=callback
            )
        return out if space is None else space.decode(out)

    def save_grid(
        self, path: Path | str, images: torch.Tensor, *, nrow: int | None = None, padding: int = 1
    ) -> Path:
        """Write [-1, 1] images as one PNG grid, atomically."""
        return sampling.save_grid(path, images, nrow, padding=padding)

    # ------------------------------------------------------------------ evaluation

    def build_metrics(self, names: Sequence[str]) -> dict[str, Any]:
        """Build the recipe's ``[metrics.NAME]`` tables of these names."""
        return evaluation.build_metrics(self.recipe, self.registry, list(names))

    def evaluate(
        self, metrics: Mapping[str, Any], *, seed: int, num_samples: int, batch_size: int
    ) -> dict[str, float]:
        """Run ``metrics`` (from :meth:`build_metrics`) on the sampling weights now; image
        ``i`` is seeded from ``(seed, i)``. The reference data is built once per run."""
        context = evaluation.EvalContext(
            run=self,
            seed=seed,
            num_samples=num_samples,
            batch_size=batch_size,
            reference=self.state.eval_reference,
        )
        results = evaluation.evaluate(context, metrics)
        self.state.eval_reference = context.reference
        return results

    # ------------------------------------------------------------------ checkpoints

    def draw_state(self) -> dict[str, Any]:
        """The data position and random-number states now (``"data"``, ``"rng"``: the keys
        of :meth:`state_dict`); small host copies, no device sync."""
        data = self.batches.state_dict() if self.batches is not None else None
        return {"data": data, "rng": rng_state(self.state.generator)}

    def save_checkpoint(
        self, path: Path | str, state: Mapping[str, Any] | None = None, *, last: Path | None = None
    ) -> Path:
        """Write ``state`` (default: :meth:`state_dict`) to ``path`` atomically (temporary
        file, fsync, rename); with ``last``, then make ``last`` name the same bytes."""
        path = checkpoint.save_checkpoint(path, self.state_dict() if state is None else state)
        if last is not None:
            checkpoint.link_checkpoint(path, last)
        return path

    def remove_stale_temporaries(self, folder: Path | str) -> list[Path]:
        """Remove the temporary files that killed writers on this host left in ``folder``."""
        return files.remove_stale_temporaries(folder)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (see the module docstring)."""
        hook_state: dict[str, Any] = {}
        for part in self.pm.hook.denoisekit_state_dict(run=self):
            if part:
                hook_state.update(part)
        return {
            "step": self.step,
            "model": checkpoint.strip_compile_prefix(self.model.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_schedule.state_dict(),  # the file format's key
            **self.draw_state(),
            "hooks": hook_state,
            **({} if self.latent is None else {LATENT_KEY: self.latent.record()}),
            "recipe": self.recipe.to_toml(),
            RECIPE_FOLDER_KEY: recipe_folder_record(self.recipe.root, self.out_dir),
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
            weights = checkpoint.strip_compile_prefix(state["model"])
            load_fitting(self.model, weights, source=source)
            self.state.step = int(state["step"])
            if not weights_only:
                self.optimizer.load_state_dict(state["optimizer"])
                self.lr_schedule.load_state_dict(state["lr_scheduler"])
                if self.batches is not None:
                    self.batches.load_state_dict(state["data"])
                set_rng_state(self.state.generator, state["rng"])
                distributed.seed_per_rank(self.recipe.seed, self.step, self.dist)
            self.pm.hook.denoisekit_load_state_dict(run=self, state=state.get("hooks", {}))
            if self.latent is not None:
                self.latent.check_record(state.get(LATENT_KEY), source)
            elif LATENT_KEY in state:
                raise CheckpointError(
                    f"{source}: a latent run's checkpoint; its recipe lacks [latent]"
                )
        except (KeyError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise CheckpointError(
                f"{source}: does not match this recipe's run ({type(exc).__name__}: {first[:200]})"
            ) from exc


def logged_grad_norm(run: Run) -> float | None:
    """The gradient norm to log: the one clipping measured (``state.grad_norm``), else the
    model's gradients' total norm; None when there is none or it is not finite."""
    norm = run.state.grad_norm
    if norm is None:
        grads = [p.grad for p in run.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else None
    if norm is None or not math.isfinite(value := float(norm)):
        return None
    return value


def versions(registry: Registry) -> dict[str, Any]:
    """Versions of python, torch, denoisekit and every loaded plugin, for run metadata."""
    from denoisekit import __version__

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # TorchVersion does not load with weights_only
        "denoisekit": __version__,
        "plugins": dict(sorted(registry.plugins.items())),
    }
