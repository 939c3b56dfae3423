"""Every hook specification, grouped by phase, and :class:`Run`, the run hooks see.

Calls are keyword only; an implementation may take any subset of the arguments. The
component plugin manager answers the registration hooks; each run's own manager, holding
its ``[hooks.NAME]`` components, the run-lifecycle hooks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    import torch

    from denoisekit.contracts import ComponentSpec, Loss, NoiseSchedule
    from denoisekit.files import RunPaths

#: The project name that ties markers and managers together.
PROJECT = "denoisekit"

_hookspec = pluggy.HookspecMarker(PROJECT)

# --------------------------------------------------------------------------- the run


class Run(Protocol):
    """A training run as hooks see it: read its parts, act through its methods.

    Components are named like their kinds; ``data`` is None in a run built for sampling;
    ``schedule``, ``loss``, ``sampler`` and ``denoiser`` are None in an autoencoder run
    (``model`` is the autoencoder; it reconstructs instead of sampling: docs/latent.md).
    """

    recipe: Any  # the validated recipe (``recipe.train``, ``recipe.to_toml()``, ...)
    registry: Any  # the component registry the run was built from
    pm: pluggy.PluginManager  # the run manager: ``run.pm.hook.NAME(run=run, ...)``
    device: torch.device
    out_dir: Path  # the run folder
    paths: RunPaths  # every path of the run folder (denoisekit.files.RunPaths)
    data: Any
    model: torch.nn.Module  # the raw backbone; checkpoints hold its weights
    schedule: NoiseSchedule
    loss: Loss
    optimizer: torch.optim.Optimizer
    lr_schedule: Any
    sampler: Any
    denoiser: Any  # backbone + schedule + prediction type, over the trained weights
    hooks: Mapping[str, Any]  # the ``[hooks.NAME]`` components by name
    step: int  # optimization steps taken so far
    train_model: torch.nn.Module  # what the forward pass calls (compiled, DDP-wrapped)
    total_steps: int
    is_main: bool  # rank 0 (the process that writes files) or a single process
    num_classes: int | None

    def clip_gradients(self) -> None: ...  # to train.grad_clip if set; keeps the norm
    def optimizer_step_skipped(self) -> bool: ...  # a hook skipped the last step (host sync)
    def sample(self, n: int, *, generator: Any, cond: Any = None) -> torch.Tensor: ...  # [-1, 1]
    def save_grid(  # [-1, 1] images as one PNG grid, written atomically
        self, path: Path, images: torch.Tensor, *, nrow: int | None = None, padding: int = 1
    ) -> Path: ...
    def build_metrics(self, names: Sequence[str]) -> dict[str, Any]: ...  # [metrics.NAME]
    def evaluate(  # metrics on the sampling weights; image i seeded from (seed, i)
        self, metrics: Mapping[str, Any], *, seed: int, num_samples: int, batch_size: int
    ) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, Any]: ...  # everything needed to resume exactly
    def draw_state(self) -> dict[str, Any]: ...  # state_dict's data position and RNG states
    def save_checkpoint(  # atomic (temporary file, fsync, rename); then `last` names it
        self, path: Path, state: Mapping[str, Any] | None = None, *, last: Path | None = None
    ) -> Path: ...
    def remove_stale_temporaries(self, folder: Path) -> list[Path]: ...  # killed writers' files


# --------------------------------------------------------------------------- registration


@_hookspec(historic=True)
def denoisekit_addhooks(pluginmanager: pluggy.PluginManager) -> None:
    """Add hook specifications of a plugin's own to the component plugin manager.

    Example::

        @denoisekit.hookimpl
        def denoisekit_addhooks(pluginmanager):
            from my_plugin import hookspecs
            pluginmanager.add_hookspecs(hookspecs)
    """


@_hookspec
def denoisekit_components() -> Iterable[ComponentSpec]:
    """Return the :class:`denoisekit.ComponentSpec` records of this plugin's components (kind,
    name, frozen attrs config class, factory); two providing one kind and name is an error.

    Example::

        @denoisekit.hookimpl
        def denoisekit_components():
            yield denoisekit.ComponentSpec(
                kind="sampler", name="euler", config=EulerConfig, build=EulerSampler,
                summary="Euler steps on the probability-flow ODE (Karras et al. 2022).",
            )
    """


# --------------------------------------------------------------------------- run lifecycle


@_hookspec(historic=True)
def denoisekit_configure(run: Run) -> None:
    """Called once after every component is built, before training.

    Example::

        @denoisekit.hookimpl
        def denoisekit_configure(run):
            print(run.recipe.name, sum(p.numel() for p in run.model.parameters()))
    """


@_hookspec(firstresult=True)
def denoisekit_train_model(run: Run, model: torch.nn.Module) -> torch.nn.Module | None:
    """Return the module the training forward calls (asked once, after configure); under
    torchrun the engine wraps the answer in DistributedDataParallel.

    :param model: the raw backbone, ``run.model`` (which stays raw).

    Example::

        @denoisekit.hookimpl
        def denoisekit_train_model(model):
            return torch.compile(model, backend="eager")
    """


@_hookspec
def denoisekit_train_start(run: Run) -> None:
    """Called once when the loop starts (after a resume: ``run.step`` steps are taken).

    Example::

        @denoisekit.hookimpl
        def denoisekit_train_start(run):
            print(f"step {run.step + 1} of {run.total_steps}")
    """


@_hookspec(firstresult=True)
def denoisekit_train_forward(
    run: Run, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None
) -> torch.Tensor | None:
    """Compute the backbone output for one micro-batch; wrappers fit a context around it.
    In an autoencoder run ``x_t`` is the clean batch, ``t`` None, and the answer the tuple
    ``(reconstruction, posterior mean, posterior logvar)`` (docs/latent.md).

    :param x_t: the noised batch; on a run with ``[inpainting]``, the backbone's input of
        ``2 C + 1`` channels: ``[x_t, masked image (0 where regenerated), mask (1 =
        regenerate)]``, while the loss still targets the ``C``-channel image.
    :param t: the model's time input, a float tensor of shape ``(B,)``.
    :param cond: class labels or ``None``.
    :returns: the model output (``C`` channels).

    Example::

        @denoisekit.hookimpl(wrapper=True)
        def denoisekit_train_forward(run):
            with torch.autocast(run.device.type, dtype=torch.bfloat16):
                return (yield)
    """


@_hookspec(firstresult=True)
def denoisekit_backward(run: Run, loss: torch.Tensor) -> bool | None:
    """Back-propagate one micro-batch's (accumulation-scaled) loss; True once handled.

    Example::

        @denoisekit.hookimpl(tryfirst=True)
        def denoisekit_backward(loss):
            (loss * 2.0).backward()
            return True  # handled: the core's default is skipped
    """


@_hookspec(firstresult=True)
def denoisekit_optimizer_step(run: Run) -> bool | None:
    """Step the optimizer (once per optimization step); True once handled.

    Example::

        @denoisekit.hookimpl
        def denoisekit_optimizer_step(run):
            torch.nn.utils.clip_grad_value_(run.model.parameters(), 1.0)
            return run.optimizer.step() or True
    """


@_hookspec
def denoisekit_optimizer_step_skipped(run: Run) -> torch.Tensor | None:
    """Whether the last optimizer step was skipped (float16 AMP): a 0-dim device bool
    tensor, or None. Read by ``run.optimizer_step_skipped()`` once a loss is not finite.

    Example::

        class Scaler:
            @denoisekit.hookimpl
            def denoisekit_optimizer_step_skipped(self):
                return self.found_inf > 0
    """


@_hookspec
def denoisekit_train_step_end(
    run: Run, step: int, loss: torch.Tensor, loss_per_sample: torch.Tensor, t: torch.Tensor
) -> None:
    """Called after every optimization step (EMA update, logging, checkpoints).

    :param loss: the step's mean loss, a 0-dim device tensor (``.item()`` synchronizes).
    :param loss_per_sample: the last micro-batch's per-sample losses (detached; this
        rank's slice under torchrun).
    :param t: their timesteps, integers in ``[0, T)``.

    Example::

        @denoisekit.hookimpl
        def denoisekit_train_step_end(step, loss_per_sample, t):
            if step % 1000 == 0:  # .item() synchronizes: only on rare steps
                print(step, loss_per_sample[t < 100].mean().item())
    """


@_hookspec
def denoisekit_log_scalars(run: Run, step: int, scalars: dict[str, float]) -> None:
    """Receive the scalars logged every ``train.log_every`` steps: ``loss`` (mean since
    the last log), ``lr``, ``grad_norm``, ``images_per_sec`` (the loop's only host syncs).

    :param scalars: name → value; add entries with ``tryfirst`` for later hooks.

    Example::

        @denoisekit.hookimpl(tryfirst=True)
        def denoisekit_log_scalars(run, scalars):
            scalars["lr_x1000"] = 1000 * run.optimizer.param_groups[0]["lr"]
    """


@_hookspec
def denoisekit_preview_images(run: Run, step: int, images: torch.Tensor) -> None:
    """Receive a preview grid ``(N, C, H, W)`` in [-1, 1], always from the same noise.

    Example::

        @denoisekit.hookimpl
        def denoisekit_preview_images(run, step, images):
            run.save_grid(run.out_dir / f"preview-{step:08d}.jpg", images)
    """


@_hookspec(firstresult=True)
def denoisekit_sampling_model(run: Run) -> Any:
    """Return the module sampling and evaluation use (the EMA hook answers).

    Example::

        @denoisekit.hookimpl
        def denoisekit_sampling_model(run):
            return run.hooks["slow-ema"].model
    """


@_hookspec(firstresult=True)
def denoisekit_last_checkpoint(run: Run) -> Path | None:
    """Return the newest good checkpoint file (the checkpoint hook answers; the NaN guard names it).

    Example::

        @denoisekit.hookimpl
        def denoisekit_last_checkpoint(run):
            return run.out_dir / "weights.pt"
    """


@_hookspec
def denoisekit_train_end(run: Run) -> None:
    """Called once when training finishes normally; only if train_start ran.

    Example::

        @denoisekit.hookimpl
        def denoisekit_train_end(run):
            (run.out_dir / "DONE").write_text(str(run.step))
    """


@_hookspec
def denoisekit_train_error(run: Run, error: BaseException) -> None:
    """Called when training stops on an exception or an interrupt (Ctrl-C, SIGTERM).

    Example::

        @denoisekit.hookimpl
        def denoisekit_train_error(run, error):
            print(f"stopped after step {run.step}: {error!r}")
    """


@_hookspec
def denoisekit_state_dict(run: Run) -> dict[str, Any] | None:
    """Return this hook's state to store in checkpoints (``{key: state}``), or None.

    Example::

        @denoisekit.hookimpl
        def denoisekit_state_dict(run):
            return {"my-hook": {"seen": run.step}}  # one key per hook
    """


@_hookspec
def denoisekit_load_state_dict(run: Run, state: dict[str, Any]) -> None:
    """Restore this hook's state from a checkpoint's merged hook-state dict.

    Example::

        @denoisekit.hookimpl
        def denoisekit_load_state_dict(state):
            print(state.get("my-hook", {}).get("seen"))
    """
