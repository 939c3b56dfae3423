"""Sampling cost: seconds and network evaluations per image (``[metrics.sample-time]``).

By default it reports how the evaluation's shared sample set was drawn (no extra work):
the wall time from the first batch to a device synchronization after the last, divided
by the number of images, and the network evaluations per image, counted through
``Denoiser.num_evaluations`` (one per ``predict`` call on a batch; falls back to the sampler's
``num_evaluations`` for a sampler that bypasses ``predict``). Everything the sampling
includes counts: the batches' copies to the CPU too.

With ``num_images`` set it times a separate draw of that many images instead, after an
untimed warm-up batch (CUDA kernels, cuDNN autotuning and ``torch.compile`` pay their
start-up costs there).

Recipe example::

    [metrics.sample-time]
    num_images = 256
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import attrs

from denoisekit import CheckContext, ComponentSpec, Problem, hookimpl
from denoisekit.config import int_at_least, option, over_memory
from denoisekit.contracts import MetricContext
from denoisekit.errors import DenoisekitError


@attrs.frozen(kw_only=True)
class SampleTimeConfig:
    """Options of ``[metrics.sample-time]``."""

    num_images: int | None = option(
        None,
        "None: time the evaluation's shared sample set; N: time a separate draw of N images "
        "after a warm-up batch",
        validator=int_at_least(1, optional=True),
    )
    warmup: bool = option(
        True,
        "draw an untimed batch first (with num_images set)",
        validator=attrs.validators.instance_of(bool),
    )


class SampleTimeMetric:
    """The ``sample-time`` metric: ``sec_per_image`` and ``nfe_per_image``."""

    name = "sample-time"
    requires_model = True  # cannot score a sample file

    def __init__(self, config: SampleTimeConfig) -> None:
        self.config = config

    def __call__(self, context: MetricContext) -> dict[str, float]:
        context.require_run(self.name)
        n = self.config.num_images
        if n is None:
            drawn = context.samples()
        else:
            batch = min(context.batch_size, n)
            if self.config.warmup:
                context.draw(batch, seed=context.seed + 1, batch_size=batch)
            drawn = context.draw(n, seed=context.seed, batch_size=batch)
        if drawn.seconds is None or drawn.num_evaluations is None:
            raise DenoisekitError("sample-time: these samples were given, not drawn: no timing")
        return {
            "sec_per_image": drawn.seconds / drawn.num_images,
            "nfe_per_image": float(drawn.num_evaluations),
        }


def check_sample_time(config: SampleTimeConfig, context: CheckContext) -> Iterator[Problem]:
    """The ``num_images`` drawn (held in float32 until timed) fit in memory."""
    shape = context.fact("data", "image_shape")
    if config.num_images is None or shape is None:
        return
    what = f"holding {config.num_images} float32 images of {'×'.join(map(str, shape))}"
    problem = over_memory(4 * math.prod(shape) * config.num_images, what)
    if problem is not None:
        yield "num_images", f"{problem}; lower {context.table}.num_images"


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    """Register ``sample-time``."""
    return [
        ComponentSpec(
            kind="metric",
            name="sample-time",
            config=SampleTimeConfig,
            build=SampleTimeMetric,
            check=check_sample_time,
            summary="seconds and network evaluations per sampled image.",
        )
    ]
