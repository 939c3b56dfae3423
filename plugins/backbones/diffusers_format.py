"""The ``unet`` backbone's ``"diffusers"`` format: ``UNet2DModel`` folders ↔ recipe tables.

The object the ``unet`` spec declares as ``formats={"diffusers": DIFFUSERS}``; the core's
``denoisekit import-diffusers`` and ``export-diffusers`` read and write the files and call
its two methods (docs/interop.md). Everything diffusers-specific about the model and its
scheduler lives here and in ``diffusers_layout.py`` / ``diffusers_scheduler.py``.

Import: ``config.json`` → the ``[backbone]`` table; the scheduler config (when present) →
``[schedule]``, ``[loss] prediction`` and the ``ddim`` sampler's ``spacing`` and
``clip_denoised`` (diffusers' ``timestep_spacing`` and ``clip_sample``). Without a
scheduler config: DDPM's linear schedule, eps prediction (diffusers' defaults).

Export: a ``DDPMScheduler`` config (``variance_type = "fixed_small"``: our ``ddpm``), so
that the core's pipeline folder is a ``DDPMPipeline``, as DDPM models are published, which
``DDIMPipeline`` loads too (it converts the scheduler). It carries our ``ddim`` conventions,
which ``DDIMScheduler`` reads: ``set_alpha_to_one = True`` (the last step goes to
alpha_bar = 1), ``steps_offset = 0``, the recipe's ``ddim`` spacing when diffusers has it
(``leading``, ``trailing``, ``linspace``; else ``leading``) and clipping (else on).
"""

from __future__ import annotations

from typing import Any

import torch

from denoisekit.plugins.backbones.diffusers_layout import (
    diffusers_config_from_unet_options,
    state_dict_from_diffusers,
    state_dict_to_diffusers,
    unet_options_from_diffusers,
)
from denoisekit.plugins.backbones.diffusers_scheduler import (
    SCHEDULER_DEFAULTS,
    prediction_from_scheduler_config,
    schedule_from_scheduler_config,
    scheduler_config_from_schedule,
)

#: diffusers' ``timestep_spacing`` values that are ``ddim`` spacings (the same definitions).
DIFFUSERS_SPACINGS = ("leading", "trailing", "linspace")


def _sampler_table(scheduler: dict[str, Any]) -> dict[str, Any]:
    """The ``ddim`` sampler table with the scheduler config's sampling conventions."""
    table: dict[str, Any] = {"type": "ddim"}
    spacing = scheduler.get("timestep_spacing", "leading")
    if spacing in DIFFUSERS_SPACINGS:
        table["spacing"] = spacing
    if scheduler.get("clip_sample_range", 1.0) == 1.0:
        table["clip_denoised"] = bool(scheduler.get("clip_sample", True))
    return table


class DiffusersFormat:
    """``UNet2DModel`` configs and weights with their scheduler config, as recipe tables."""

    #: The ``_class_name`` values of ``config.json`` this converter reads.
    model_classes: tuple[str, ...] = ("UNet2DModel",)

    def import_model(
        self,
        config: dict[str, Any],
        scheduler: dict[str, Any] | None,
        weights: dict[str, torch.Tensor],
    ) -> tuple[dict[str, dict[str, Any]], dict[str, torch.Tensor]]:
        """``(tables, state dict)``: recipe tables by name (``backbone``, ``schedule``,
        ``loss``, ``sampler``) and the backbone's weights.

        Raises:
            UnsupportedLayoutError: one line naming the field that has no ``unet`` form.
        """
        options = unet_options_from_diffusers(config)
        scheduler = {**SCHEDULER_DEFAULTS, **(scheduler or {})}
        tables = {
            "backbone": {"type": "unet", **options},
            "schedule": schedule_from_scheduler_config(scheduler),
            "loss": {"type": "mse", "prediction": prediction_from_scheduler_config(scheduler)},
            "sampler": _sampler_table(scheduler),
        }
        return tables, state_dict_from_diffusers(weights, options)

    def export_model(
        self, recipe: dict[str, Any], weights: dict[str, torch.Tensor], *, prediction: str
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
        """``(config.json, scheduler_config.json, diffusers weights)`` of a resolved recipe
        (``Recipe.to_dict()``) and its backbone's weights.

        Raises:
            UnsupportedLayoutError: one line naming what diffusers cannot express.
        """
        options = {k: v for k, v in recipe["backbone"].items() if k != "type"}
        config = diffusers_config_from_unet_options(options)
        scheduler = scheduler_config_from_schedule(
            recipe["schedule"], class_name="DDPMScheduler", prediction=prediction
        )
        sampler = recipe.get("sampler", {})
        ddim = sampler if sampler.get("type") == "ddim" else {}
        spacing = ddim.get("spacing", "leading")
        scheduler.update(
            clip_sample=bool(ddim.get("clip_denoised", True)),
            clip_sample_range=1.0,
            set_alpha_to_one=True,
            steps_offset=0,
            timestep_spacing=spacing if spacing in DIFFUSERS_SPACINGS else "leading",
            variance_type="fixed_small",
        )
        return config, scheduler, state_dict_to_diffusers(weights, options)


#: The converter the ``unet`` spec declares.
DIFFUSERS = DiffusersFormat()
