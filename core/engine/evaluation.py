"""Evaluating a trained model: the context metrics share, running them, logging results.

A *metric* component is called as ``metric(context) -> dict[str, float]`` with an
:class:`EvalContext` (a :class:`denoisekit.MetricContext`), which builds what metrics need
lazily and shares it, so the metrics of one evaluation pay for each thing once: the
trained run and its denoiser over the sampling (EMA) weights; one set of samples
(image ``i`` seeded from ``(seed, i)``, timed, network evaluations counted) or a sample
file's images; the reference data (:mod:`denoisekit.engine.reference`); a cache folder
(``$DENOISEKIT_CACHE``, else ``$XDG_CACHE_HOME/denoisekit``, else ``~/.cache/denoisekit``).

:func:`evaluate` runs a dict of metrics on one context; :func:`append_results` writes the
results to a run's ``metrics.jsonl`` as ``{"step": N, "eval/<key>": value, ...}``, the
same flat form the ``evaluate`` training hook logs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from denoisekit.contracts import NULL_CLASS, Metric, SampleSet, optional
from denoisekit.engine.image_files import from_uint8, to_uint8
from denoisekit.engine.reference import build_reference_data, reference_key
from denoisekit.errors import DenoisekitError
from denoisekit.files import default_cache_dir

__all__ = [
    "EVAL_PREFIX",
    "EvalContext",
    "SampleSet",
    "append_results",
    "build_metrics",
    "default_cache_dir",
    "draw_samples",
    "evaluate",
    "format_results",
    "load_samples_npz",
]

#: Prefix of evaluation results in ``metrics.jsonl`` and TensorBoard.
EVAL_PREFIX = "eval/"
# --------------------------------------------------------------------------- samples


class _CountingSampler:
    """Wraps a sampler to count the denoiser's network evaluations per batch."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self.evaluations = 0  # sum over batches of (evaluations of the batch) × (batch size)
        self.images = 0

    def num_evaluations(self, num_timesteps: int) -> int:
        return self.sampler.num_evaluations(num_timesteps)

    def sample(self, denoiser: Any, x_T: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        before = getattr(denoiser, "num_evaluations", 0)
        out = self.sampler.sample(denoiser, x_T, **kwargs)
        self.evaluations += (getattr(denoiser, "num_evaluations", 0) - before) * len(x_T)
        self.images += len(x_T)
        return out


def draw_samples(
    run: Any,
    n: int,
    *,
    seed: int = 0,
    batch_size: int = 256,
    sampler: Any = None,
    progress: Callable[[int], None] | None = None,
) -> SampleSet:
    """Draw ``n`` images with :func:`~denoisekit.engine.sampling.sample_images`, timed and counted.

    The time runs from the first batch until the last one is on the host (each batch is
    copied to the CPU, so no extra synchronization is needed); the network evaluations are
    counted through ``Denoiser.num_evaluations`` (falling back to the sampler's
    ``num_evaluations`` for a sampler that bypasses ``predict``).
    """
    from denoisekit.engine.sampling import sample_images

    counting = _CountingSampler(sampler or run.sampler)
    start = time.perf_counter()
    images, labels = sample_images(
        run, n, seed=seed, batch_size=batch_size, sampler=counting, progress=progress
    )
    seconds = time.perf_counter() - start
    if counting.evaluations > 0:
        nfe = counting.evaluations / max(counting.images, 1)
    else:
        nfe = float(counting.num_evaluations(run.schedule.num_timesteps))
    return SampleSet(images=images, labels=labels, seconds=seconds, num_evaluations=nfe)


def load_samples_npz(path: Path | str) -> SampleSet:
    """Read a sample file: ``arr_0`` uint8 N×H×W×C (and ``arr_1`` labels when present)."""
    path = Path(path)
    if not path.is_file():
        raise DenoisekitError(f"{path}: sample file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "arr_0" not in data:
                raise DenoisekitError(
                    f"{path}: no arr_0 in this .npz (expected uint8 N×H×W×C images, as "
                    "`denoisekit sample` writes)"
                )
            images = data["arr_0"]
            labels = data.get("arr_1")
    except DenoisekitError:
        raise
    except Exception as exc:
        raise DenoisekitError(f"{path}: not a readable .npz file ({exc})") from exc
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) == 0:
        raise DenoisekitError(
            f"{path}: arr_0 must be non-empty uint8 N×H×W×C images, got {images.dtype} "
            f"{images.shape}"
        )
    label_tensor = torch.from_numpy(labels.astype(np.int64)) if labels is not None else None
    return SampleSet(images=from_uint8(images), labels=label_tensor)


# --------------------------------------------------------------------------- the context


@attrs.define(eq=False, kw_only=True)
class EvalContext:
    """What a metric gets (:class:`denoisekit.MetricContext`): the trained run, one shared
    sample set, the reference data.

    Everything is built lazily on first use and then shared by every metric of the
    evaluation.

    Attributes:
        run: the trained run (:class:`~denoisekit.engine.run.Run`, sampling-only or training),
            or None when scoring a sample file.
        seed: image ``i`` of the samples is seeded from ``(seed, i)``; metrics derive
            their other randomness (NLL noise, reference subsets) from it.
        num_samples: images in the shared sample set.
        batch_size: images per sampling batch (metrics use it as their default batch).
        cache_dir: the cache folder (see :func:`default_cache_dir`).
        recipe / registry: the recipe naming the reference data and the registry to build
            it (default: the run's).
        sample_set: the shared samples; pass one to score given images (a sample file).
        reference: the reference dataset; default: the recipe's data, ``train=False``.
        progress: called with the number of images after each sampling batch.
    """

    run: Any = None
    seed: int = 0
    num_samples: int = 1000
    batch_size: int = 256
    cache_dir: Path = attrs.field(factory=default_cache_dir, converter=Path)
    recipe: Any = None
    registry: Any = None
    sample_set: SampleSet | None = None
    reference: Any = None
    progress: Callable[[int], None] | None = None
    _reference_images: dict[tuple[int | None, int], Any] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        # Defaults from the run (reading attributes only; nothing is built here).
        if self.run is not None:
            if self.recipe is None:
                self.recipe = self.run.recipe
            if self.registry is None:
                self.registry = self.run.registry

    # -- the model -----------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """The run's device (CPU without a run)."""
        return torch.device(self.run.device) if self.run is not None else torch.device("cpu")

    def require_run(self, metric: str) -> Any:
        """The run, or a one-line error naming the metric that needs one."""
        if self.run is None:
            raise DenoisekitError(
                f"metric {metric!r} needs a trained model: give a run folder or checkpoint, "
                "not a sample file"
            )
        return self.run

    def denoiser(self, metric: str = "this metric") -> Any:
        """A denoiser over the sampling weights (the EMA where ``[hooks.ema]`` is on)."""
        return self.require_run(metric).sampling_denoiser()

    # -- samples -------------------------------------------------------------------------

    def samples(self) -> SampleSet:
        """The shared sample set, drawn on first use."""
        if self.sample_set is None:
            run = self.require_run("sampling")
            self.sample_set = draw_samples(
                run,
                self.num_samples,
                seed=self.seed,
                batch_size=self.batch_size,
                progress=self.progress,
            )
        return self.sample_set

    def draw(self, n: int, *, seed: int, batch_size: int) -> SampleSet:
        """``n`` fresh images (image ``i`` seeded from ``(seed, i)``), timed and counted."""
        return draw_samples(self.require_run("sampling"), n, seed=seed, batch_size=batch_size)

    def sample_images(self) -> torch.Tensor:
        """The shared samples as float32 ``(N, C, H, W)`` in [-1, 1] (CPU)."""
        return self.samples().images

    def samples_uint8(self) -> np.ndarray:
        """The shared samples as uint8 ``(N, H, W, C)``, as ``denoisekit sample`` saves them."""
        return to_uint8(self.sample_images())

    # -- reference data ------------------------------------------------------------------

    def reference_data(self) -> Any:
        """The reference dataset: the recipe's data built with ``train=False``."""
        if self.reference is None:
            if self.recipe is None or self.registry is None:
                raise DenoisekitError(
                    "no reference data: evaluate a run, or pass --reference RECIPE_OR_DATA"
                )
            self.reference = build_reference_data(self.recipe, self.registry)
        return self.reference

    def reference_key(self) -> str:
        """A cache key naming the reference data (type and options of the recipe's data)."""
        if self.recipe is None:
            return f"dataset-{id(self.reference)}"
        return reference_key(self.recipe)

    def reference_images(
        self, n: int | None = None, *, batch_size: int = 256
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``n`` reference images (all when None) and their labels, on the CPU.

        With ``n`` smaller than the dataset, a subset drawn with a generator seeded from
        ``seed`` (the same subset every time: datasets are often sorted by class).
        Labels are None when the data has none (``num_classes`` None or labels ``NULL_CLASS``).
        """
        from torch.utils.data import DataLoader, Subset

        data = self.reference_data()
        total = len(data)
        if total == 0:
            raise DenoisekitError("the reference data is empty")
        count = total if n is None else min(int(n), total)
        key = (count, self.seed)
        if key not in self._reference_images:
            dataset: Any = data
            if count < total:
                order = torch.randperm(total, generator=torch.Generator().manual_seed(self.seed))
                dataset = Subset(data, order[:count].tolist())
            # An explicit generator: evaluation must not move torch's global random state.
            loader = DataLoader(
                dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator()
            )
            images, labels = [], []
            for x, y in loader:
                images.append(x.float())
                labels.append(torch.as_tensor(y))
            label_tensor: torch.Tensor | None = torch.cat(labels).long()
            if not data.num_classes or bool((label_tensor == NULL_CLASS).all()):
                label_tensor = None
            self._reference_images[key] = (torch.cat(images), label_tensor)
        return self._reference_images[key]


# --------------------------------------------------------------------------- running metrics


class _Prefixed:
    """A metric whose keys get ``<table name>/`` in front (two tables of one type)."""

    def __init__(self, prefix: str, metric: Any) -> None:
        self.prefix = prefix
        self.metric = metric

    @property
    def requires_model(self) -> bool:
        return bool(optional(self.metric, Metric, "requires_model"))

    def __call__(self, context: EvalContext) -> dict[str, float]:
        return {f"{self.prefix}/{k}": v for k, v in self.metric(context).items()}


def build_metrics(recipe: Any, registry: Any, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Build metrics by name: the recipe's ``[metrics.NAME]`` table when it has one, else
    the registered metric ``NAME`` with its defaults.

    ``names`` None: every ``[metrics.*]`` table of the recipe. A table whose name differs
    from its type (``[metrics.fd_inception] type = "fd"``) reports its keys as
    ``<name>/<key>``.

    Raises:
        RegistryError: an unknown metric name (listing the registered ones).
    """
    tables = dict(recipe.metrics) if recipe is not None else {}
    chosen = list(tables) if names is None else list(dict.fromkeys(names))
    metrics: dict[str, Any] = {}
    for name in chosen:
        if name in tables:
            choice = tables[name]
            metric = registry.build("metric", choice.type, choice.config)
            metrics[name] = metric if choice.type == name else _Prefixed(name, metric)
        else:
            metrics[name] = registry.build("metric", name)
    return metrics


def evaluate(
    context: EvalContext,
    metrics: Mapping[str, Callable[[EvalContext], Mapping[str, float]]],
    *,
    on_result: Callable[[str, dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Run every metric on one context; returns their results merged into one dict.

    Args:
        context: the shared context.
        metrics: name → metric (``metric(context) -> {key: value}``), run in order.
        on_result: called with each metric's name and results as they come.

    Raises:
        DenoisekitError: two metrics reporting the same key.
    """
    results: dict[str, float] = {}
    for name, metric in metrics.items():
        values = {str(k): float(v) for k, v in metric(context).items()}
        clash = sorted(set(values) & set(results))
        if clash:
            raise DenoisekitError(
                f"metric {name!r} reports {', '.join(clash)}, already reported by another "
                "metric; give one of them another [metrics.NAME] table name"
            )
        results.update(values)
        if on_result is not None:
            on_result(name, values)
    return results


def eval_scalars(results: Mapping[str, float]) -> dict[str, float]:
    """Results as logged scalars: ``{"eval/<key>": value}``."""
    return {f"{EVAL_PREFIX}{k}": float(v) for k, v in results.items()}


def append_results(path: Path | str, step: int, results: Mapping[str, float]) -> Path:
    """Append ``{"step": step, "eval/<key>": value, ...}`` to a run's metrics file.

    Non-finite values are written as null (JSON has no NaN).
    """
    from denoisekit.engine.run_folder import append_metrics

    record: dict[str, Any] = {"step": int(step)}
    for key, value in eval_scalars(results).items():
        record[key] = value if math.isfinite(value) else None
    return append_metrics(Path(path), record)


def format_results(results: Mapping[str, float]) -> str:
    """A two-column text table of the results."""
    if not results:
        return "(no results)\n"
    width = max(len("metric"), *(len(k) for k in results))
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 12}"]
    for key, value in results.items():
        lines.append(f"{key:<{width}}  {value:.6g}")
    return "\n".join(lines) + "\n"
