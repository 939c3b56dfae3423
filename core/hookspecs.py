"""Every hook specification of denoisekit, grouped by phase.

Plugins implement these with the :data:`denoisekit.hookimpl` marker. Calls are keyword
only, and an implementation may accept any subset of a hook's arguments, so hooks can
gain arguments without breaking existing plugins.

Two plugin managers exist in a process:

* the *component* manager (:func:`denoisekit.host.plugin_manager.get_plugin_manager`) holds the
  built-in plugins, entry-point plugins and the recipe's ``plugins = [...]``; it answers the
  registration hooks;
* each training run builds its own *run* manager (same specs) into which the run's hook
  components (``[hooks.NAME]`` tables: EMA, AMP, compile, TensorBoard, checkpoints, ...)
  are registered; it answers the run-lifecycle hooks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import torch

    from denoisekit.contracts import ComponentSpec

#: The project name that ties markers and managers together.
PROJECT = "denoisekit"

_hookspec = pluggy.HookspecMarker(PROJECT)

# --------------------------------------------------------------------------- registration


@_hookspec(historic=True)
def denoisekit_addhooks(pluginmanager: pluggy.PluginManager) -> None:
    """Add hook specifications of a plugin's own (``pluginmanager.add_hookspecs``).

    Called once per plugin as it is registered (historic: late plugins see it too).

    :param pluginmanager: the component plugin manager.

    Example::

        @denoisekit.hookimpl
        def denoisekit_addhooks(pluginmanager):
            from my_plugin import hookspecs
            pluginmanager.add_hookspecs(hookspecs)
    """


@_hookspec
def denoisekit_components() -> Iterable[ComponentSpec]:
    """Return the components this plugin provides.

    Called once when the component registry is built. Every record names its kind
    (``backbone``, ``schedule``, ``loss``, ``sampler``, ``optimizer``, ``lr_schedule``,
    ``data``, ``hook``, ``metric``), its lowercase name, its frozen attrs config class and
    its factory. Two plugins providing one kind and name is an error naming both.

    :returns: an iterable of :class:`denoisekit.ComponentSpec`.

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
def denoisekit_configure(run: Any) -> None:
    """Called once on the run manager after every component is built, before training.

    Historic: a hook registered later in the run still receives it.

    :param run: the :class:`denoisekit.engine.training.Run` (model, schedule, loss, optimizer, ...).
    """


@_hookspec
def denoisekit_train_start(run: Any) -> None:
    """Called once when the training loop starts (after a resume has been applied).

    :param run: the run; ``run.step`` is the first step about to be taken.
    """


@_hookspec(firstresult=True)
def denoisekit_train_forward(
    run: Any, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None
) -> torch.Tensor | None:
    """Compute the backbone output for one micro-batch.

    firstresult: the first non-None result is used. The core's default (``trylast``)
    calls ``run.train_model(x_t, t, cond)``. Wrappers (``wrapper=True``) fit a context
    around it: the AMP hook enters ``torch.autocast`` and ``return (yield)``.

    :param run: the run.
    :param x_t: the noised batch.
    :param t: the timesteps, float tensor of shape ``(B,)``.
    :param cond: class labels or ``None``.
    :returns: the model output.
    """


@_hookspec(firstresult=True)
def denoisekit_backward(run: Any, loss: torch.Tensor) -> bool | None:
    """Back-propagate the (accumulation-scaled) loss of one micro-batch.

    firstresult; the core's default (``trylast``) calls ``loss.backward()`` and returns
    True. The float16 AMP hook scales the loss with its GradScaler first.
    """


@_hookspec(firstresult=True)
def denoisekit_optimizer_step(run: Any) -> bool | None:
    """Clip gradients (if configured) and step the optimizer once per optimization step.

    firstresult; returns True once handled. Whether a float16 GradScaler skipped the
    step is known only on the device (see :func:`denoisekit_optimizer_step_skipped`), so
    no host sync is forced here. The core's default (``trylast``) clips with
    ``train.grad_clip`` and calls ``run.optimizer.step()``.
    """


@_hookspec
def denoisekit_optimizer_step_skipped(run: Any) -> torch.Tensor | None:
    """Say whether the last optimizer step was skipped (a float16 GradScaler found inf/NaN).

    Asked through ``run.optimizer_step_skipped()`` — by the NaN guard and the checkpoint
    hook, only once a loss is not finite — which reads the answers (a host sync). The
    float16 AMP hook implements it.

    :param run: the run.
    :returns: a 0-dim bool tensor on the device, or ``None`` when this plugin skips no
        steps or has not stepped yet.
    """


@_hookspec
def denoisekit_train_step_end(run: Any, step: int, loss: torch.Tensor) -> None:
    """Called after every optimization step (EMA update, logging, checkpoints).

    :param run: the run; ``run.step`` equals ``step``.
    :param step: the number of optimization steps taken so far (1-based).
    :param loss: the step's mean loss, a 0-dim tensor still on the device (call
        ``.item()`` only at logging intervals: it synchronizes).
    """


@_hookspec
def denoisekit_log_scalars(run: Any, step: int, scalars: dict[str, float]) -> None:
    """Receive the scalars logged every ``train.log_every`` steps.

    The core computes ``loss`` (mean since the last log), ``lr``, ``grad_norm`` and
    ``images_per_sec`` (these are the only host syncs of the loop) and appends them to
    ``metrics.jsonl``; hooks add their own before the call (TensorBoard writes them all).

    :param step: the optimization step.
    :param scalars: name → value; implementations may add entries for later ones
        (``tryfirst`` to add, default order to consume).
    """


@_hookspec
def denoisekit_preview_images(run: Any, step: int, images: torch.Tensor) -> None:
    """Receive a preview sample grid drawn during training (the TensorBoard hook logs it).

    :param step: the optimization step.
    :param images: ``(N, C, H, W)`` in [-1, 1], always drawn from the same initial noise.
    """


@_hookspec(firstresult=True)
def denoisekit_sampling_model(run: Any) -> Any:
    """Return the module used for sampling and evaluation (the EMA hook answers).

    firstresult; the core's default (``trylast``) returns the raw model.
    """


@_hookspec
def denoisekit_train_end(run: Any) -> None:
    """Called once when training finishes normally; only if train_start ran."""


@_hookspec
def denoisekit_train_error(run: Any, error: BaseException) -> None:
    """Called when training stops on an exception or an interrupt (Ctrl-C, SIGTERM).

    The checkpoint hook writes a resumable checkpoint here when the state is sound.
    """


@_hookspec
def denoisekit_state_dict(run: Any) -> dict[str, Any] | None:
    """Return this hook's state to store in checkpoints (``{key: state}``), or None."""


@_hookspec
def denoisekit_load_state_dict(run: Any, state: dict[str, Any]) -> None:
    """Restore this hook's state from a checkpoint's merged hook-state dict."""
