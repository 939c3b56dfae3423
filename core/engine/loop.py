"""The training loop: :func:`train` a built :class:`~denoisekit.engine.run.Run`.

The loop draws a micro-batch, draws timesteps uniformly and noise, noises the batch,
calls the backbone (through ``denoisekit_train_forward``) and the loss, back-propagates,
steps the optimizer and the learning-rate schedule, and calls the lifecycle hooks. It
knows nothing of EMA, AMP, compile, logging to TensorBoard or checkpoint files: those are
hook components registered into the run's own plugin manager.

Under ``torchrun`` (a :class:`~denoisekit.engine.distributed.DistContext` with several ranks) the
same loop runs on every rank with DistributedDataParallel; :mod:`denoisekit.engine.distributed`
says what is global and what is per rank. A single process takes none of those paths.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from denoisekit.contracts import NULL_CLASS
from denoisekit.denoiser import check_output_shape
from denoisekit.diffusion import q_sample
from denoisekit.engine import autoencoder_loop, distributed
from denoisekit.engine.autoencoder_run import AutoencoderRun
from denoisekit.engine.checkpoint import load_checkpoint
from denoisekit.engine.masks import conditioning, draw_masks
from denoisekit.engine.run import Run, logged_grad_norm, versions
from denoisekit.engine.weights import init_from
from denoisekit.files import write_bytes

log = logging.getLogger(__name__)


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


def write_run_files(run: Run) -> None:
    """The resolved recipe and the versions, in the run folder (atomic writes)."""
    paths = run.paths
    write_bytes(paths.recipe, run.recipe.to_toml().encode("utf-8"))
    write_bytes(paths.versions, (json.dumps(versions(run.registry), indent=2) + "\n").encode())


def train(run: Run, *, before_files: Callable[[], None] | None = None) -> Run:
    """Train until ``recipe.train.steps`` optimization steps have been taken (an
    autoencoder run: :func:`denoisekit.engine.autoencoder_loop.train_steps`).

    ``before_files`` is called once the run is built and initialised (``train.init_from``
    loaded), before it writes its first file (``--overwrite`` moves the old run aside
    there). Calls ``denoisekit_train_start`` once, then per step the forward, backward and
    optimizer hooks and ``denoisekit_train_step_end``; ``denoisekit_train_end`` at the
    end, or ``denoisekit_train_error`` (then re-raises) on an exception or interrupt.
    """
    hook = run.pm.hook
    cfg = run.recipe.train
    if run.batches is None:
        raise ValueError("this run was built with_data=False: it can sample, not train")
    if run.step == 0 and cfg.init_from is not None:  # a fresh run, not a resumed one
        init_from(run, run.recipe.root / cfg.init_from)
    if before_files is not None:
        before_files()
    if run.is_main:
        write_run_files(run)
    run.model.train()
    with _sigterm_raises():
        hook.denoisekit_train_start(run=run)
        try:
            if isinstance(run, AutoencoderRun):
                autoencoder_loop.train_steps(run, cfg)
            else:
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
    state = run.state
    batches = run.batches
    assert batches is not None  # train() checked
    num_timesteps = run.schedule.num_timesteps
    world_size = run.world_size
    loss_sum = torch.zeros((), device=run.device)
    steps_since_log = 0
    shape_checked = False  # the backbone's output shape, on the first micro-batch only
    inpainting = run.recipe.inpainting
    latent = run.latent
    tick = time.perf_counter()
    while state.step < cfg.steps:
        run.optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=run.device)
        for micro in range(cfg.grad_accum):
            x0, labels = next(batches)
            if latent is not None:  # cached posteriors or images → normalized latents
                x0 = latent.training_latents(x0, state.generator, run.dist)
            # Notation: x0 clean images, t ~ U{0..T-1}, eps ~ N(0, I), x_t = q_sample(x0, t, eps).
            # Under torchrun t and eps are drawn for the global micro-batch (generators
            # stay equal on all ranks) and each rank keeps its slice of the images.
            n = x0.shape[0] * world_size
            t = torch.randint(0, num_timesteps, (n,), device=run.device, generator=state.generator)
            noise = torch.randn(
                (n, *x0.shape[1:]), device=run.device, generator=state.generator, dtype=x0.dtype
            )
            dropped = None  # label dropout: these images train the null class
            if cfg.label_dropout > 0 and run.num_classes:
                u = torch.rand((n,), device=run.device, generator=state.generator)
                dropped = u < cfg.label_dropout
            mask = None  # [inpainting]: 1 where the model regenerates, 0 where it sees x0
            if inpainting.enabled:
                size = x0.shape[-1]
                mask = draw_masks(
                    inpainting.masks, n, size, state.generator, inpainting.p_all_unknown
                ).to(x0.dtype)
            if world_size > 1:
                mine = distributed.rank_slice(n, run.dist)
                t, noise = t[mine], noise[mine]
                dropped = dropped[mine] if dropped is not None else None
                mask = mask[mine] if mask is not None else None
            with _no_sync_unless(run, micro == cfg.grad_accum - 1):
                x_t = q_sample(run.schedule, x0, t, noise)
                cond = labels if run.num_classes else None
                if cond is not None and dropped is not None:
                    cond = cond.masked_fill(dropped, NULL_CLASS)
                x_in = x_t if mask is None else torch.cat([x_t, conditioning(x0, mask)], dim=1)
                output = hook.denoisekit_train_forward(
                    run=run, x_t=x_in, t=run.denoiser.model_time(t), cond=cond
                )
                if not shape_checked:  # before the loss can broadcast it, or fail on it
                    check_output_shape(output, x_t, run.denoiser.name)
                    shape_checked = True
                per_sample = run.loss(output.float(), x0=x0, noise=noise, t=t)
                loss = per_sample.mean()
                hook.denoisekit_backward(run=run, loss=loss / cfg.grad_accum)
            step_loss += loss.detach()
        hook.denoisekit_optimizer_step(run=run)
        run.lr_schedule.step()
        state.step += 1
        step_loss /= cfg.grad_accum
        # The global mean loss on every rank (a scalar, asynchronous on NCCL): every hook
        # sees the same loss, so a NaN on any rank stops every rank alike (NaN guard) and
        # rank 0 never checkpoints weights a NaN gradient from another rank reached.
        distributed.all_reduce_mean_(step_loss, run.dist)
        loss_sum += step_loss
        steps_since_log += 1
        hook.denoisekit_train_step_end(
            run=run, step=state.step, loss=step_loss, loss_per_sample=per_sample.detach(), t=t
        )
        if state.step % cfg.log_every == 0 or state.step == cfg.steps:
            now = time.perf_counter()
            scalars = {
                "loss": (loss_sum / steps_since_log).item(),
                "lr": float(run.optimizer.param_groups[0]["lr"]),
                "images_per_sec": steps_since_log * cfg.batch_size / max(now - tick, 1e-9),
            }
            if (norm := logged_grad_norm(run)) is not None:
                scalars["grad_norm"] = norm
            hook.denoisekit_log_scalars(run=run, step=state.step, scalars=scalars)
            loss_sum.zero_()
            steps_since_log = 0
            tick = time.perf_counter()
