"""Training an autoencoder run (:func:`train_steps`, called by
:func:`denoisekit.engine.loop.train` for an autoencoder recipe), and its calibration at the
end (:class:`Calibration`).

One optimization step, per micro-batch: the images ``x`` go through
``denoisekit_train_forward`` (so ``[hooks.amp]`` autocasts it; the core's answer calls
:class:`ReconstructionPass`: ``z ~ q(z|x)`` with the run's generator, ``r = decode(z)``),
then the objective of ``[autoencoder_training]`` (LDM's without LPIPS, per image)::

    rec(x, r) summed over pixels + kl_weight KL(q(z|x) || N(0, I)) [+ w disc_weight (-mean D(r))]

with ``w`` LDM's adaptive weight (or 1) from step ``disc_start`` on, backward through
``denoisekit_backward``, then the discriminator's hinge loss on ``x`` and ``r`` (detached)
and its own backward; then ``denoisekit_optimizer_step`` for the autoencoder, the
discriminator's optimizer step, the lr schedule and the step-end hooks, exactly as the
diffusion loop orders them (EMA, previews, checkpoints and exact resume work unchanged).

Logged every ``train.log_every`` steps (one host sync): ``loss``, ``reconstruction`` (the
per-pixel mean), ``kl`` (per image), ``lr``, ``grad_norm``, ``images_per_sec`` and, once
the discriminator trains, ``g_loss``, ``disc_weight`` (the adversarial term's weight),
``disc_loss``, ``logits_real`` and ``logits_fake``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import nn

from denoisekit import hookimpl
from denoisekit.autoencoder import DiagonalGaussian
from denoisekit.diffusion import randn
from denoisekit.engine.autoencoder_run import AutoencoderRun, calibration_images
from denoisekit.engine.latents import calibrate
from denoisekit.engine.patch_gan import adaptive_weight, hinge_discriminator_loss
from denoisekit.engine.run import logged_grad_norm

log = logging.getLogger(__name__)

#: The scalars summed on the device between logs: the first three every step, the rest on
#: steps the discriminator trains.
SCALARS = ("loss", "reconstruction", "kl", "g_loss", "disc_weight", "disc_loss",
           "logits_real", "logits_fake")  # fmt: skip


class ReconstructionPass(nn.Module):
    """The training forward of an autoencoder: ``x, generator → (decode(z), mean, logvar)``
    with ``z = mean + exp(logvar / 2) eps``, ``eps`` drawn with ``generator`` (one module,
    so that ``torch.compile`` sees the whole pass)."""

    def __init__(self, autoencoder: nn.Module) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(
        self, x: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        posterior = self.autoencoder.encode(x)
        mean, logvar = posterior.mean, posterior.logvar
        eps = randn(mean.shape, generator, device=mean.device, dtype=mean.dtype)
        return self.autoencoder.decode(mean + torch.exp(0.5 * logvar) * eps), mean, logvar


class Calibration:
    """The core's run hook measuring the latent ``shift`` and ``scale``
    (:func:`denoisekit.engine.latents.calibrate`) after the last step's other step-end hooks
    (the EMA update) and before its checkpoint, so the final checkpoint holds them."""

    @hookimpl(trylast=True)
    def denoisekit_train_step_end(self, run: AutoencoderRun, step: int) -> None:
        if step == run.total_steps and run.recipe.autoencoder_training.calibration_images:
            calibrate_run(run)


def calibrate_run(run: AutoencoderRun) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibrate the sampling weights (EMA where on) over ``calibration_images`` training
    images; the trained weights get the same ``shift``/``scale``. Logged as the scalars
    ``latent_shift/C``, ``latent_scale/C`` (``metrics.jsonl``) at the run's step."""
    cfg = run.recipe.autoencoder_training
    model = run.sampling_model()
    batches = calibration_images(run, cfg.calibration_images)
    shift, scale = calibrate(model, batches, posterior=cfg.calibration_posterior)
    if model is not run.model:
        run.model.shift.copy_(model.shift)
        run.model.scale.copy_(model.scale)
    count = sum(len(b) for b in batches)
    scalars: dict[str, float] = {"calibration_images": count}
    scalars.update({f"latent_shift/{c}": float(v) for c, v in enumerate(shift)})
    scalars.update({f"latent_scale/{c}": float(v) for c, v in enumerate(scale)})
    run.pm.hook.denoisekit_log_scalars(run=run, step=run.step, scalars=scalars)
    log.info(
        "calibrated the latents over %d images (%s): shift %s, scale %s",
        count, cfg.calibration_posterior, _numbers(shift), _numbers(scale),
    )  # fmt: skip
    return shift, scale


def _numbers(values: torch.Tensor) -> str:
    return "[" + ", ".join(f"{float(v):.4g}" for v in values) + "]"


def _objective(
    run: AutoencoderRun, x: torch.Tensor, out: Any, adversarial: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, per-image loss, scalars)`` of one micro-batch (scalars in :data:`SCALARS`
    order, zeros where the discriminator does not train)."""
    cfg = run.recipe.autoencoder_training
    recon, mean, logvar = (t.float() for t in out)
    diff = x.float() - recon
    per_pixel = diff.abs() if cfg.reconstruction == "l1" else diff.square()
    nll = per_pixel.flatten(1).sum(dim=1)  # per image, summed over its pixels (LDM)
    kl = DiagonalGaussian(mean, logvar).kl()
    per_image = nll + cfg.kl_weight * kl
    loss = per_image.mean()
    values = [loss.detach(), per_pixel.detach().mean(), kl.detach().mean()]
    if adversarial:
        disc = run.discriminator
        assert disc is not None  # adversarial only with one
        disc.requires_grad_(False)
        g_loss = -disc(recon).mean()
        disc.requires_grad_(True)
        weight = g_loss.detach().new_full((), cfg.disc_weight)  # on the device, no copy
        if cfg.disc_adaptive:
            weight = weight * adaptive_weight(nll.mean(), g_loss, recon)
        loss = loss + weight * g_loss
        values[0] = loss.detach()
        values += [g_loss.detach(), weight]
    return loss, per_image.detach(), torch.stack(values)


def _discriminator_loss(run: AutoencoderRun, x: torch.Tensor, recon: torch.Tensor) -> Any:
    """The discriminator's hinge loss and its mean logits on real and reconstructed images."""
    disc = run.discriminator
    assert disc is not None
    real, fake = disc(x.float()), disc(recon.detach().float())
    loss = hinge_discriminator_loss(real, fake)
    return loss, torch.stack([loss.detach(), real.detach().mean(), fake.detach().mean()])


def train_steps(run: AutoencoderRun, cfg: Any) -> None:
    """Train until ``cfg.steps`` (``recipe.train``) optimization steps have been taken."""
    hook = run.pm.hook
    state = run.state
    batches = run.batches
    assert batches is not None  # train() checked
    objective = run.recipe.autoencoder_training
    sums = torch.zeros(len(SCALARS), device=run.device)
    steps_since_log = adversarial_steps = 0
    tick = time.perf_counter()
    while state.step < cfg.steps:
        adversarial = run.discriminator is not None and state.step >= objective.disc_start
        run.optimizer.zero_grad(set_to_none=True)
        if adversarial and run.disc_optimizer is not None:
            run.disc_optimizer.zero_grad(set_to_none=True)
        step_values = torch.zeros(len(SCALARS), device=run.device)
        for _ in range(cfg.grad_accum):
            x, _labels = next(batches)
            out = hook.denoisekit_train_forward(run=run, x_t=x, t=None, cond=None)
            loss, per_image, values = _objective(run, x, out, adversarial)
            hook.denoisekit_backward(run=run, loss=loss / cfg.grad_accum)
            step_values[: len(values)] += values
            if adversarial:
                disc_loss, disc_values = _discriminator_loss(run, x, out[0])
                (disc_loss / cfg.grad_accum).backward()
                step_values[5:] += disc_values
        hook.denoisekit_optimizer_step(run=run)
        if adversarial and run.disc_optimizer is not None:
            run.disc_optimizer.step()
        run.lr_schedule.step()
        state.step += 1
        step_values /= cfg.grad_accum
        sums += step_values
        steps_since_log += 1
        adversarial_steps += int(adversarial)
        hook.denoisekit_train_step_end(
            run=run, step=state.step, loss=step_values[0], loss_per_sample=per_image, t=None
        )
        if state.step % cfg.log_every == 0 or state.step == cfg.steps:
            now = time.perf_counter()
            means = sums.tolist()  # the one host sync of the interval
            scalars = {name: means[i] / steps_since_log for i, name in enumerate(SCALARS[:3])}
            if adversarial_steps:
                for i, name in enumerate(SCALARS[3:], start=3):
                    scalars[name] = means[i] / adversarial_steps
            scalars["lr"] = float(run.optimizer.param_groups[0]["lr"])
            scalars["images_per_sec"] = steps_since_log * cfg.batch_size / max(now - tick, 1e-9)
            if (norm := logged_grad_norm(run)) is not None:
                scalars["grad_norm"] = norm
            hook.denoisekit_log_scalars(run=run, step=state.step, scalars=scalars)
            sums.zero_()
            steps_since_log = adversarial_steps = 0
            tick = time.perf_counter()
