"""An autoencoder run (:class:`AutoencoderRun`): the :class:`~denoisekit.engine.run.Run` of
an autoencoder recipe (an ``[autoencoder]`` table and no ``[backbone]``; docs/latent.md).

The autoencoder is the run's ``model``: checkpoints hold its weights under ``"model"`` and
its EMA (``[hooks.ema]``) under the hooks' ``"ema"``, exactly where a diffusion run keeps
its backbone's, so the run folder, resume, ``train.init_from`` and export work unchanged.
A run has no schedule, loss, sampler or denoiser (they are None); with
``[autoencoder_training] discriminator`` it also has a :class:`PatchDiscriminator` and its
optimizer (the recipe's ``[optimizer]`` at its base learning rate), checkpointed under
``"discriminator"``. :func:`calibration_images` and :func:`preview_images` read fixed
training images without touching the training's random-number states.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import nn

from denoisekit.denoiser import eval_mode
from denoisekit.engine.run import Run
from denoisekit.errors import CheckpointError, DenoisekitError

#: What an autoencoder run answers where a diffusion run samples.
NOT_DIFFUSION = (
    "this is an autoencoder run (trained from an [autoencoder] recipe without a [backbone]): "
    "it reconstructs images and samples none; name it in a latent diffusion recipe instead "
    "(docs/latent.md)"
)


@attrs.frozen(eq=False)
class AutoencoderRun(Run):
    """A :class:`Run` whose ``model`` is an autoencoder (``schedule``, ``loss``, ``sampler``
    and ``denoiser`` are None), with the patch ``discriminator`` and its optimizer where the
    recipe turns it on."""

    discriminator: nn.Module | None = None
    disc_optimizer: torch.optim.Optimizer | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the data's images."""
        if self.data is None:
            raise DenoisekitError(f"{self.out_dir}: an autoencoder run built without data")
        return tuple(self.data.image_shape)  # type: ignore[return-value]

    @property
    def num_classes(self) -> int | None:
        return None  # an autoencoder uses no labels

    def sampling_model(self) -> nn.Module:
        """The autoencoder reconstructions, calibration and export use (EMA where on)."""
        return self.pm.hook.denoisekit_sampling_model(run=self)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """``decode(mode(encode(images)))`` with the sampling weights, in eval mode."""
        model = self.sampling_model()
        with eval_mode(model):
            return model.decode(model.encode(images.to(self.device)).mode()).float()

    def preview_pairs(self, n: int) -> torch.Tensor:
        """The first ``n`` training images, each followed by its reconstruction: ``(2n, C,
        H, W)`` in [-1, 1] (pairs side by side in a grid of an even number of columns)."""
        images = fixed_images(self.data, range(min(n, len(self.data))), seed=self.recipe.seed)
        pairs = torch.stack([images.to(self.device), self.reconstruct(images)], dim=1)
        return pairs.flatten(0, 1).clamp(-1, 1)

    # ------------------------------------------------------------------ not a diffusion run

    def sampling_denoiser(self) -> Any:
        raise DenoisekitError(NOT_DIFFUSION)

    def sample(self, n: int, **kwargs: Any) -> torch.Tensor:
        raise DenoisekitError(NOT_DIFFUSION)

    def build_metrics(self, names: Any) -> dict[str, Any]:
        raise DenoisekitError(NOT_DIFFUSION)

    def evaluate(self, metrics: Any, **kwargs: Any) -> dict[str, float]:
        raise DenoisekitError(NOT_DIFFUSION)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """:meth:`Run.state_dict`, with the discriminator's weights and optimizer."""
        state = super().state_dict()
        if self.discriminator is not None and self.disc_optimizer is not None:
            state["discriminator"] = {
                "model": self.discriminator.state_dict(),
                "optimizer": self.disc_optimizer.state_dict(),
            }
        return state

    def load_state_dict(
        self, state: dict[str, Any], *, source: str = "checkpoint", weights_only: bool = False
    ) -> None:
        super().load_state_dict(state, source=source, weights_only=weights_only)
        if weights_only or self.discriminator is None or self.disc_optimizer is None:
            return
        saved = state.get("discriminator")
        if saved is None:  # e.g. train.init_from an autoencoder trained without one
            return
        try:
            self.discriminator.load_state_dict(saved["model"])
            self.disc_optimizer.load_state_dict(saved["optimizer"])
        except (KeyError, RuntimeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [repr(exc)])[0]
            raise CheckpointError(
                f"{source}: its discriminator does not match this recipe's ({first[:200]})"
            ) from exc


def fixed_images(data: Any, indices: Any, *, seed: int) -> torch.Tensor:
    """The images ``data[i]`` for ``i`` in ``indices`` as one batch, their random transforms
    (flips) drawn from ``seed`` in a forked RNG: the same every time, and the training's
    random-number states untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([data[int(i)][0] for i in indices])


def calibration_images(run: AutoencoderRun, count: int) -> list[torch.Tensor]:
    """``count`` training images (all, if the data has fewer), drawn without replacement
    from the recipe's seed, in batches of ``train.batch_size``."""
    order = torch.randperm(len(run.data), generator=torch.Generator().manual_seed(run.recipe.seed))
    chosen = order[:count].tolist()
    size = run.recipe.train.batch_size
    return [
        fixed_images(run.data, chosen[i : i + size], seed=run.recipe.seed + i)
        for i in range(0, len(chosen), size)
    ]
