"""Metrics during training (``[hooks.evaluate]``).

Every ``every`` optimization steps (and when training ends) the hook runs the recipe's
``[metrics.NAME]`` tables (all of them, or those ``metrics`` names) on the training run:
sampling metrics draw from the sampling weights (the EMA where ``[hooks.ema]`` is on,
through ``run.sampling_denoiser()``), ``nll`` evaluates them on held-out data. The results
are logged through ``denoisekit_log_scalars`` as ``eval/<key>`` (``eval/fd``,
``eval/nll_bpd``): ``metrics.jsonl`` and TensorBoard receive them like the loss.

Evaluation leaves training untouched: it uses its own random generators (samples seeded
per image from ``seed``), puts the model back in training mode and keeps no state in
checkpoints. Keep it cheap: fewer samples than a final evaluation (``num_samples``) and,
for ``nll``, subsampled timesteps (``[metrics.nll] timesteps = 50``).

Recipe example::

    [metrics.fd]
    features = "digits"

    [hooks.evaluate]
    every = 1000
    num_samples = 500
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import attrs

from denoisekit import CheckContext, ComponentSpec, Problem, hookimpl
from denoisekit.config import int_at_least, option, over_memory
from denoisekit.errors import RecipeError
from denoisekit.hookspecs import Run

log = logging.getLogger(__name__)


def _names(inst: Any, attribute: attrs.Attribute, value: tuple[str, ...]) -> None:
    for i, name in enumerate(value):
        if not isinstance(name, str) or not name:
            raise ValueError(f"'{attribute.name}[{i}]' must be a metric table name: {name!r}")


@attrs.frozen(kw_only=True)
class EvaluateConfig:
    """Options of ``[hooks.evaluate]``."""

    every: int = option(
        1000,
        "optimization steps between evaluations",
        validator=int_at_least(1),
    )
    at_end: bool = option(
        True, "also evaluate when training ends", validator=attrs.validators.instance_of(bool)
    )
    metrics: tuple[str, ...] = option(
        (), "names of the recipe's [metrics.NAME] tables to run; empty: all", validator=_names
    )
    num_samples: int = option(
        500,
        "images drawn for the sampling metrics",
        validator=int_at_least(2),
    )
    batch_size: int = option(
        256,
        "images per sampling batch",
        validator=int_at_least(1),
    )
    seed: int = option(
        0, "image i is seeded from (seed, i)", validator=attrs.validators.instance_of(int)
    )


class EvaluateHook:
    """The run hook.

    Attributes:
        metrics: name → metric, built at configure time.
        last_step: the step of the last evaluation, or None.
        history: ``(step, results)`` of every evaluation of this process.
    """

    #: Writes files or the console: rank 0 only under torchrun.
    rank_zero_only = True

    def __init__(self, config: EvaluateConfig) -> None:
        self.config = config
        self.metrics: dict[str, Any] = {}
        self.last_step: int | None = None
        self.history: list[tuple[int, dict[str, float]]] = []

    @hookimpl
    def denoisekit_configure(self, run: Run) -> None:
        # Loaded recipes were checked already; this catches recipes built in code.
        context = CheckContext(recipe=run.recipe, facts={}, table="hooks.evaluate")
        for key, message in check_evaluate(self.config, context):
            where = f"{run.recipe.path}: " if run.recipe.path is not None else ""
            raise RecipeError(f"{where}hooks.evaluate{'.' + key if key else ''}: {message}")
        names = list(self.config.metrics) or list(run.recipe.metrics)
        self.metrics = run.build_metrics(names)

    def evaluate(self, run: Run, step: int) -> dict[str, float]:
        """Run the metrics now and log them as ``eval/<key>`` at ``step``."""
        cfg = self.config
        results = run.evaluate(
            self.metrics, seed=cfg.seed, num_samples=cfg.num_samples, batch_size=cfg.batch_size
        )
        scalars = {f"eval/{key}": float(value) for key, value in results.items()}
        run.pm.hook.denoisekit_log_scalars(run=run, step=step, scalars=scalars)
        self.last_step = step
        self.history.append((step, results))
        log.info("evaluate at step %d: %s", step, results)
        return results

    @hookimpl
    def denoisekit_train_step_end(self, run: Run, step: int) -> None:
        if step % self.config.every == 0:
            self.evaluate(run, step)

    @hookimpl
    def denoisekit_train_end(self, run: Run) -> None:
        if self.config.at_end and self.last_step != run.step:
            self.evaluate(run, run.step)


def check_evaluate(config: EvaluateConfig, context: CheckContext) -> Iterator[Problem]:
    """The metrics to run must be tables of the recipe, and there must be some; the samples
    (held in float32 until scored) and a batch in flight fit in memory."""
    if context.recipe.backbone is None:  # an autoencoder recipe (docs/latent.md)
        yield "", "an autoencoder run draws no samples to measure: remove the table"
        return
    tables = context.recipe.metrics
    if not (config.metrics or tables):
        yield "", "the recipe has no [metrics.NAME] tables to run; add one, e.g. [metrics.fd]"
    unknown = [n for n in config.metrics if n not in tables]
    if unknown:
        known = ", ".join(tables) or "none"
        yield (
            "metrics",
            f"no [metrics.{unknown[0]}] table in the recipe (its metrics: {known})",
        )
    shape = context.fact("data", "image_shape")
    if shape is not None:
        n, batch = config.num_samples, min(config.batch_size, config.num_samples)
        for key, count in (("num_samples", n), ("batch_size", n + 2 * batch)):
            what = f"holding {count} float32 images of {'×'.join(map(str, shape))}"
            problem = over_memory(4 * math.prod(shape) * count, what)
            if problem is not None:
                yield key, f"{problem}; lower it"
                return


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    """Register ``evaluate``."""
    return [
        ComponentSpec(
            kind="hook",
            name="evaluate",
            config=EvaluateConfig,
            build=EvaluateHook,
            check=check_evaluate,
            summary="run the recipe's [metrics.*] every N steps; log them as eval/<key>.",
        )
    ]
