"""Periodic, atomic, resumable checkpoints (``[hooks.checkpoint]``).

Files, in the run's checkpoints folder (``run.paths``):

* the step file of step N (``run.paths.step_checkpoint(N)``, ``step-00001000.pt``):
  :meth:`Run.state_dict` after that many optimization steps, written every ``every``
  steps and at the end of training with ``run.save_checkpoint`` (temporary file, fsync,
  rename: a crash mid-write never leaves a truncated file). The newest ``keep`` of them
  are kept.
* the last checkpoint (``run.paths.last_checkpoint``): the newest step file, as a hard
  link (no second copy of the bytes) swapped in atomically, or a copy where the file
  system has no hard links. ``denoisekit train --resume`` continues from it exactly.
* the step file with the suffix ``.safetensors`` with ``safetensors = true``: the weights
  alone, to share, in the weights-file format of :func:`denoisekit.files.weights_file`
  (``model.*`` the trained ones, ``ema.*`` the sampling ones when the EMA hook is on); any
  library reads them without unpickling, and ``train.init_from`` starts a run from them.

A process killed mid-write (``kill -9``) leaves only a temporary file, which the next run's
start removes (``run.remove_stale_temporaries``); the last checkpoint and the step files are those
of the last completed write. A full disk is a one-line error naming
the file.

Pruning only considers step files up to the step the run started from (after a resume) and
the ones this run wrote; files of steps beyond it (an abandoned branch) are left alone.

Interrupts: on Ctrl-C (``KeyboardInterrupt``) or SIGTERM (the core's
``TrainingInterrupted``) a checkpoint of the last completed step is written. The signal
may arrive anywhere in a step, so the hook records where the loop is:

* during the forward / backward pass of the next step (or its data loading, or logging):
  the weights and optimizer are those of the last completed step; the data position and
  random-number states are restored to their values at that step's end (recorded then), so
  resuming continues exactly as an uninterrupted run would;
* during the optimizer update (``optimizer.step``, the lr schedule): the weights may be
  half-updated, so nothing is written and the last checkpoint is kept (a warning says so);
* during the step-end hooks of a completed step: written as is; a hook's state (the EMA)
  may lag that step by one update (a warning says so).

A :class:`denoisekit.errors.NonFiniteLossError` (from ``[hooks.nan-guard]``) writes nothing:
the last good checkpoint stays the last checkpoint. Without the guard, a step whose loss is not
finite is not checkpointed either (one host sync per checkpoint, not per step).

Recipe example::

    [hooks.checkpoint]
    every = 1000
    keep = 3
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from pathlib import Path
from typing import Any

import attrs
import torch

from denoisekit import ComponentSpec, hookimpl
from denoisekit.config import int_at_least, option
from denoisekit.errors import NonFiniteLossError
from denoisekit.files import RunPaths, save_safetensors, weights_file
from denoisekit.hookspecs import Run

log = logging.getLogger(__name__)


@attrs.frozen(kw_only=True)
class CheckpointConfig:
    """Options of ``[hooks.checkpoint]``."""

    every: int = option(
        1000,
        "optimization steps between checkpoints (one is also written at the end)",
        validator=int_at_least(1),
    )
    keep: int | None = option(
        3,
        "step files to keep, newest first (unset: keep all)",
        validator=int_at_least(1, optional=True),
    )
    on_interrupt: bool = option(
        True,
        "write a checkpoint on Ctrl-C or SIGTERM",
        validator=attrs.validators.instance_of(bool),
    )
    safetensors: bool = option(
        False,
        "also write the weights as step-N.safetensors: model.* trained, ema.* sampling (EMA)",
        validator=attrs.validators.instance_of(bool),
    )


class CheckpointHook:
    """The run hook.

    Attributes:
        paths: the run folder's paths (``run.paths``), once configured.
        last_checkpoint: the newest good step file (written by this run or found at the
            start), or None; ``denoisekit_last_checkpoint`` answers it (the NaN guard).
        last_checkpoint_step: its step.
    """

    #: Writes files or the console: rank 0 only under torchrun.
    rank_zero_only = True

    def __init__(self, config: CheckpointConfig) -> None:
        self.config = config
        self.paths: RunPaths | None = None
        self.last_checkpoint: Path | None = None
        self.last_checkpoint_step: int | None = None
        self._history: list[tuple[int, Path]] = []  # step files eligible for pruning
        # Where the loop is: "between" steps, in the optimizer "update", in "step_end".
        self._phase = "between"
        self._boundary: dict[str, Any] | None = None
        self._last_loss: torch.Tensor | None = None

    # ------------------------------------------------------------------ hooks

    @hookimpl
    def denoisekit_configure(self, run: Run) -> None:
        self.paths = run.paths

    @hookimpl
    def denoisekit_train_start(self, run: Run) -> None:
        self._history = []
        later = []
        folder = self.paths.checkpoints if self.paths is not None else None
        if folder is not None and folder.is_dir():
            run.remove_stale_temporaries(folder)
            for path in folder.iterdir():
                step = self.paths.checkpoint_step(path)
                if step is not None:
                    (self._history if step <= run.step else later).append((step, path))
        self._history.sort()
        if later:
            log.warning(
                "checkpoint: %d step file(s) beyond step %d in %s are left alone",
                len(later),
                run.step,
                folder,
            )
        if self._history:
            self.last_checkpoint_step, self.last_checkpoint = self._history[-1]
        self._record_boundary(run)

    @hookimpl
    def denoisekit_last_checkpoint(self) -> Path | None:
        return self.last_checkpoint

    @hookimpl(wrapper=True)
    def denoisekit_optimizer_step(self) -> Generator[None, Any, Any]:
        self._phase = "update"
        return (yield)

    @hookimpl(wrapper=True)
    def denoisekit_train_step_end(
        self, run: Run, step: int, loss: torch.Tensor
    ) -> Generator[None, Any, Any]:
        # A wrapper: this code runs after every other step-end hook (the EMA update),
        # so the checkpoint holds the step's final state.
        self._phase = "step_end"
        result = yield
        self._last_loss = loss
        if step % self.config.every == 0:
            self.save(run, loss=loss)
        self._record_boundary(run)
        self._phase = "between"
        return result

    @hookimpl
    def denoisekit_train_end(self, run: Run) -> None:
        if self.last_checkpoint_step != run.step:
            self.save(run, loss=self._last_loss)

    @hookimpl
    def denoisekit_train_error(self, run: Run, error: BaseException) -> None:
        where = self._describe_last()
        if isinstance(error, NonFiniteLossError):
            log.warning("checkpoint: not written (non-finite loss); %s", where)
            return
        if not isinstance(error, KeyboardInterrupt) or not self.config.on_interrupt:
            return
        if self._phase == "update":
            log.warning(
                "checkpoint: interrupted during the optimizer update of step %d, the weights "
                "may be half-updated: not written; %s",
                run.step + 1,
                where,
            )
            return
        if self.last_checkpoint_step == run.step:
            log.warning(
                "checkpoint: interrupted; step %d is already saved: %s",
                run.step,
                self.last_checkpoint,
            )
            return
        state = run.state_dict()
        if self._phase == "step_end":
            log.warning(
                "checkpoint: interrupted inside the step-end hooks of step %d: hook states "
                "(EMA) may lag that step by one update",
                run.step,
            )
        elif self._boundary is not None and self._boundary["step"] == run.step:
            # Mid-step: undo the data and random draws of the unfinished step.
            state.update(data=self._boundary["data"], rng=self._boundary["rng"])
        try:
            self.save(run, state=state)
        except Exception:  # never mask the interrupt that brought us here
            log.exception("checkpoint: writing the interrupted step %d failed", run.step)

    # ------------------------------------------------------------------ files

    def save(
        self, run: Run, *, state: dict[str, Any] | None = None, loss: torch.Tensor | None = None
    ) -> Path | None:
        """Write the step file of ``run.step`` (and the last checkpoint), then prune old ones.

        Returns the path, or None when ``loss`` is given and not finite.
        """
        if loss is not None and not _loss_ok(run, loss):
            log.warning(
                "checkpoint: step %d: loss is not finite: not written; %s",
                run.step,
                self._describe_last(),
            )
            return None
        if self.paths is None:
            raise RuntimeError("checkpoint hook used before denoisekit_configure")
        path = self.paths.step_checkpoint(run.step)
        run.save_checkpoint(path, state, last=self.paths.last_checkpoint)
        if self.config.safetensors:
            save_weights(run, path.with_suffix(".safetensors"))
        self._history = [(s, p) for s, p in self._history if s != run.step]
        self._history.append((run.step, path))
        self._prune()
        self.last_checkpoint, self.last_checkpoint_step = path, run.step
        log.info("checkpoint: wrote %s (step %d)", path, run.step)
        return path

    def _prune(self) -> None:
        keep = self.config.keep
        if keep is None:
            return
        while len(self._history) > keep:
            _, old = self._history.pop(0)
            old.unlink(missing_ok=True)
            old.with_suffix(".safetensors").unlink(missing_ok=True)

    def _record_boundary(self, run: Run) -> None:
        # The data position and RNG states at the end of a step (small host copies, no
        # device sync), restored into a checkpoint written on a mid-step interrupt.
        self._boundary = {"step": run.step, **run.draw_state()}

    def _describe_last(self) -> str:
        if self.last_checkpoint is None:
            return "no checkpoint has been written"
        return f"the last good checkpoint is {self.last_checkpoint}"


def _loss_ok(run: Run, loss: torch.Tensor) -> bool:
    """Finite, or not finite on a step the float16 loss scaler skipped (one host sync)."""
    return bool(torch.isfinite(loss).all()) or run.optimizer_step_skipped()


def save_weights(run: Run, path: Path) -> Path:
    """The trained (``model.*``) and sampling (``ema.*``, where a hook such as EMA gives other
    weights) weights as safetensors: a file any library loads without unpickling."""
    sampling = run.pm.hook.denoisekit_sampling_model(run=run)
    other = sampling.state_dict() if sampling is not run.model else None
    return save_safetensors(path, weights_file(run.model.state_dict(), other))


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    """Register ``checkpoint``."""
    return [
        ComponentSpec(
            kind="hook",
            name="checkpoint",
            config=CheckpointConfig,
            build=CheckpointHook,
            summary="atomic checkpoints every N steps, at the end and on interrupt; keeps K.",
        )
    ]
