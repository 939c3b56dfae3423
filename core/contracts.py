"""Component kinds (one :class:`Kind` record each), the registration record and the
contracts components meet: :class:`typing.Protocol` classes (no need to inherit from them),
whose optional attributes carry their default (read them with :func:`optional`) and whose
methods say how the host calls them: arguments before ``/`` positionally (under any names),
after ``*`` by name (the registry checks it: :mod:`denoisekit.host.signatures`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs

if TYPE_CHECKING:
    import torch

    from denoisekit.autoencoder import DiagonalGaussian
    from denoisekit.hookspecs import Run

_NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]*$")

#: The class label meaning "no class": what a class-conditional backbone reads as the null
#: class (classifier-free guidance's unconditional branch, label dropout in training) and
#: what data without labels gives.
NULL_CLASS = -1


def _check_kind(inst: ComponentSpec, attribute: attrs.Attribute, value: str) -> None:
    if value not in KINDS:
        raise ValueError(f"unknown component kind {value!r}; the kinds are {', '.join(KINDS)}")


def _check_name(inst: ComponentSpec, attribute: attrs.Attribute, value: str) -> None:
    if not _NAME_RE.match(value):
        raise ValueError(
            f"component name {value!r} must be lowercase: a letter, then letters, digits, "
            "'_', '-' or '.'"
        )


def _check_config(inst: ComponentSpec, attribute: attrs.Attribute, value: type) -> None:
    if not (isinstance(value, type) and attrs.has(value)):
        raise TypeError(
            f"config of {inst.kind} {inst.name!r} must be an attrs class, got {value!r}"
        )


def _check_probe(inst: ComponentSpec, attribute: attrs.Attribute, value: Any) -> None:
    where = f"probe of {inst.kind} {inst.name!r}"
    if value is not None and inst.kind not in PROBE_KINDS:
        raise ValueError(f"{where}: only {', '.join(PROBE_KINDS)} components can be probed")
    if value is not None and not isinstance(value, Mapping):
        raise TypeError(f"{where} must be a dict of options: {value!r}")
    known = attrs.fields_dict(inst.config) if attrs.has(inst.config) else {}
    unknown = sorted(k for k in value or () if k not in known)
    if unknown:
        raise ValueError(f"{where} sets unknown options {unknown}; the options are {sorted(known)}")


#: A problem a check finds: ``(key, message)``; the sampler's ``"steps"`` is ``sampler.steps``.
Problem = tuple[str, str]

#: The facts components state about themselves for the others' checks (see
#: :attr:`ComponentSpec.facts`), by kind. A component may state others of its own.
FACTS: dict[str, dict[str, str]] = {
    "data": {
        "image_shape": "(C, H, W) of the training images",
        "num_classes": "number of classes of the labels (None: unlabelled, label NULL_CLASS)",
        "num_images": "images in the training split",
    },
    "autoencoder": {"latent_channels": "latent channels", "downsample_factor": "H / h"},
    "schedule": {"num_timesteps": "T, the number of diffusion timesteps"},
    "backbone": {"num_parameters": "parameters", "activation_bytes": "bytes per training image"},
    "optimizer": {"lr": "the base learning rate"},
}


@attrs.frozen(kw_only=True)
class CheckContext:
    """What a component's ``check`` sees of its recipe: ``recipe``, the whole recipe, every
    table structured and valid on its own (``recipe.train.steps``); ``facts``, kind → what
    that kind's component states from its config (:data:`FACTS`; a fact not stated is
    unknown, and checks needing it pass); ``table``, the checked component's key path
    (``"sampler"``, ``"hooks.ema"``)."""

    recipe: Any
    facts: Mapping[str, Mapping[str, Any]]
    table: str

    def fact(self, kind: str, name: str) -> Any:
        """The fact ``name`` of the ``kind`` component, or ``None`` when it is unknown."""
        return self.facts.get(kind, {}).get(name)


@attrs.frozen(kw_only=True)
class ComponentSpec:
    """One component a plugin provides.

    Attributes:
        kind: one of :data:`KINDS`.
        name: what a recipe selects with ``type = "name"`` (lowercase).
        config: a frozen attrs class; its fields are the component's recipe keys.
        build: the factory, ``build(config, **context)`` (each kind's context keywords:
            :data:`BUILD_CONTEXT`); a class whose ``__init__`` takes them is one.
        summary: one line shown by ``denoisekit plugins``.
        probe: options of a tiny instance the registry builds and exercises before any run
            (:data:`PROBE_KINDS` only; a backbone's sets ``in_channels`` and ``image_size``).
        facts: ``facts(config) -> dict``: what it states about itself from its config
            alone, for the others' checks (:data:`FACTS`).
        check: ``check(config, context) -> iterable of (key, message)``, run when the recipe
            loads (cheap): what only the rest of the recipe (a sampler's ``steps`` beyond the
            schedule's) or computing (betas that underflow) shows. ``context``: a
            :class:`CheckContext`; keys relative to its table (``""``: the table itself).
        formats: a backbone's converters of other libraries' files, by name (docs/interop.md).
    """

    kind: str = attrs.field(validator=_check_kind)
    name: str = attrs.field(validator=_check_name)
    config: type = attrs.field(validator=_check_config)
    build: Callable[..., Any]
    summary: str = ""
    probe: Mapping[str, Any] | None = attrs.field(default=None, validator=_check_probe, eq=False)
    facts: Callable[[Any], Mapping[str, Any]] | None = attrs.field(default=None, eq=False)
    check: Callable[[Any, CheckContext], Iterable[Problem]] | None = attrs.field(
        default=None, eq=False
    )
    formats: Mapping[str, Any] = attrs.field(factory=dict, eq=False)


def optional(component: Any, protocol: type, name: str) -> Any:
    """The optional attribute ``name`` of ``component``, or the default ``protocol`` declares."""
    return getattr(component, name, getattr(protocol, name))


# --------------------------------------------------------------------------- contracts


class NoiseSchedule(Protocol):
    """A discrete-time variance-preserving noise schedule: ``alphas_cumprod[t]`` is alpha_bar
    at ``t = 0 .. T-1`` (index ``t`` is the paper's ``t + 1``), a float64 CPU tensor,
    strictly decreasing in (0, 1)."""

    @property
    def num_timesteps(self) -> int: ...

    @property
    def alphas_cumprod(self) -> torch.Tensor: ...


class Backbone(Protocol):
    """An ``nn.Module`` mapping ``(x_t, t, cond=None)`` to a tensor of x_t's shape; ``t`` is a
    float ``(B,)`` tensor of timesteps in ``[0, T)`` (possibly fractional), or log-SNR values
    where ``time_input`` is ``"log_snr"``. A class-conditional backbone (``num_classes`` set)
    takes integer labels ``(B,)`` in ``cond``, and must read :data:`NULL_CLASS` (and
    ``cond=None``) as the null class: classifier-free guidance and label dropout send it."""

    time_input: str = "timestep"  # what ``t`` holds: "timestep" or "log_snr" (optional)
    num_classes: int | None = None  # classes of the ``cond`` labels; None: unconditional

    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None, /
    ) -> torch.Tensor: ...


class BackboneConfig(Protocol):
    """Options of a backbone's config the run reads for the image shape (optional; a
    probed backbone needs both)."""

    in_channels: int | None = None
    image_size: int | None = None
    num_classes: int | None = None  # class-conditional: labels 0 .. num_classes - 1


class Autoencoder(Protocol):
    """An ``nn.Module``: images (B, C, H, W) in [-1, 1] ``encode`` to a posterior over latents
    (``DiagonalGaussian``, in x's dtype) that ``decode`` maps back; ``latent_shape`` without
    running it (``ValueError``: images it cannot give back). ``shift``/``scale``: per-channel
    buffers; the diffusion model sees ``(z - shift) * scale`` (docs/latent.md)."""

    shift: torch.Tensor
    scale: torch.Tensor

    def encode(self, x: torch.Tensor, /) -> DiagonalGaussian: ...
    def decode(self, z: torch.Tensor, /) -> torch.Tensor: ...
    def latent_shape(self, image_shape: tuple[int, int, int], /) -> tuple[int, int, int]: ...


class Loss(Protocol):
    """Maps the model output and the batch to an unreduced per-sample loss of shape (B,)."""

    prediction_type: str  # "eps", "x0" or "v": what the backbone is trained to predict

    def __call__(
        self,
        model_output: torch.Tensor,
        /,
        *,
        x0: torch.Tensor,
        noise: torch.Tensor,
        t: torch.Tensor,
    ) -> torch.Tensor: ...


class DenoiserLike(Protocol):
    """What a sampler sees: a backbone wrapped with its schedule and prediction type.
    ``data_range``: what the sampler clamps x0 estimates (``clip_denoised``) and its result
    to; None in latent space: no clamp (``denoisekit.denoiser.clip_to_range``)."""

    schedule: NoiseSchedule
    data_range: tuple[float, float] | None = (-1.0, 1.0)

    def predict(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(eps, x0)`` estimates at timesteps ``t``, a ``(B,)`` tensor on ``x_t``'s
        device: ``torch.long`` for the schedule's steps, or floating (float64; float32 on
        MPS) for fractional timesteps, where the schedule is interpolated in log-SNR. A
        sampler passes the rows of ``diffusion.sampling_steps(...).t``, which have these dtypes."""
        ...


class SamplerLike(Protocol):
    """A sampler: the starting noise ``x_T`` (drawn by the host) to data in the denoiser's
    ``data_range`` (pixels: [-1, 1]; latents: unclamped) through a denoiser, ending at
    t = 0; shape, device and dtype follow ``x_T``, which it must not modify. ``generator``
    (one, or one per image) draws any noise of its own."""

    def num_evaluations(self, num_timesteps: int, /) -> int:
        """Network evaluations one call of :meth:`sample` makes for a schedule of this length."""
        ...

    def sample(
        self,
        denoiser: DenoiserLike,
        x_T: torch.Tensor,
        /,
        *,
        generator: torch.Generator | list[torch.Generator] | None,
        cond: torch.Tensor | None = None,
        callback: Callable[[dict[str, Any]], None] | None = None,
    ) -> torch.Tensor: ...


class DataLike(Protocol):
    """A map-style dataset of ``(image, label)`` pairs, images C×H×W in [-1, 1]; ``label`` is
    an int (:data:`NULL_CLASS` where the data has none, and ``num_classes`` is ``None``).

    Optional: ``epoch_order(generator, batch_size) -> list[int] | None``, an epoch's order (a
    permutation of the indices, drawn from ``generator`` alone, the same at any world size;
    None, drawing nothing: the engine's random order), e.g. to read storage in locality."""

    num_classes: int | None
    image_shape: tuple[int, int, int]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> tuple[torch.Tensor, int]: ...


class Optimizer(Protocol):
    """A ``torch.optim.Optimizer`` or anything with its methods."""

    def step(self) -> Any: ...
    def zero_grad(self, *, set_to_none: bool = True) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state_dict: dict[str, Any], /) -> None: ...


class LRSchedule(Protocol):
    """A learning-rate schedule stepped once per optimization step (torch's LR schedulers)."""

    def step(self) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state_dict: dict[str, Any], /) -> None: ...


class Hook(Protocol):
    """An object whose ``@denoisekit.hookimpl`` methods the run registers (see hookspecs)."""

    #: True: only rank 0 of a distributed run registers it (a hook writing files or the
    #: console); False or unset: every rank does.
    rank_zero_only: bool = False


@attrs.frozen(kw_only=True)
class SampleSet:
    """Images to score: float32 ``(N, C, H, W)`` in [-1, 1] on the CPU, the labels they were
    drawn for (or None), and, for drawn images (None for a sample file), the wall time of
    drawing them and the network evaluations per image."""

    images: torch.Tensor
    labels: torch.Tensor | None = None
    seconds: float | None = None
    num_evaluations: float | None = None

    @property
    def num_images(self) -> int:
        return int(self.images.shape[0])


class MetricContext(Protocol):
    """What a metric gets, each thing built on first use and shared by the evaluation's
    metrics; the reference data is the recipe's data built with ``train=False``."""

    seed: int
    batch_size: int
    cache_dir: Path  # for things kept between runs
    recipe: Any
    registry: Any

    @property
    def device(self) -> torch.device: ...
    def require_run(self, metric: str) -> Run: ...  # the run, or a one-line error naming metric
    def denoiser(self, metric: str = ...) -> Any: ...  # over the sampling (EMA) weights
    def samples(self) -> SampleSet: ...  # image i seeded from (seed, i), or a sample file's
    def sample_images(self) -> torch.Tensor: ...
    def draw(self, n: int, *, seed: int, batch_size: int) -> SampleSet: ...  # fresh, timed
    def reference_data(self) -> Any: ...
    def reference_images(  # a subset of n images is seeded from seed
        self, n: int | None = None, *, batch_size: int = 256
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...
    def reference_key(self) -> str: ...  # a cache key naming the reference data


class Metric(Protocol):
    """A metric computed on a trained model: returns a dict of named floats."""

    requires_model: bool = False  # True: cannot score a sample file
    uses_samples: bool = True  # False: a property of the model alone (compare runs it once)

    def __call__(self, context: MetricContext, /) -> dict[str, float]: ...


# --------------------------------------------------------------------------- kinds


@attrs.frozen
class Kind:
    """Everything the host knows of one component kind: every per-kind table derives from it."""

    name: str
    protocol: type  # the contract
    many: bool = False  # a recipe holds many, as ``[table.NAME]``; else one, as ``[table]``
    table: str = attrs.Factory(lambda self: self.name, takes_self=True)  # default: the name
    default: str | None = None  # the type a recipe leaving the table out gets (see optional)
    optional: bool = False  # no default: a recipe may leave it out (none built); else required
    context: tuple[str, ...] = ()  # the keywords ``build`` gets besides the config
    methods: tuple[str, ...] = ()  # what the class ``build`` declares must have (static check)
    probed: bool = False  # components may declare a ``probe``
    runs: bool = False  # a tiny run swaps it in and the conformance kit checks its behaviour


#: Every kind, in the order a run builds them. Build context: data's ``root`` is the recipe
#: file's folder and ``train`` a bool (the training split); ``params`` are parameters or groups.
KIND_RECORDS: tuple[Kind, ...] = (
    Kind("data", DataLike, context=("root", "train"), methods=("__len__", "__getitem__")),
    Kind("autoencoder", Autoencoder, optional=True,
         methods=("encode", "decode", "latent_shape"), probed=True),
    Kind("schedule", NoiseSchedule, default="cosine", probed=True, runs=True),
    Kind("backbone", Backbone, default="unet", probed=True, runs=True),
    Kind("loss", Loss, default="mse", context=("schedule",), methods=("__call__",),
         probed=True, runs=True),
    Kind("optimizer", Optimizer, default="adamw", context=("params", "device"),
         methods=("step", "zero_grad", "state_dict", "load_state_dict"), runs=True),
    Kind("lr_schedule", LRSchedule, default="constant", context=("optimizer", "total_steps"),
         methods=("step", "state_dict", "load_state_dict"), runs=True),
    Kind("sampler", SamplerLike, default="ddim", methods=("sample", "num_evaluations"),
         probed=True, runs=True),
    Kind("hook", Hook, many=True, table="hooks", probed=True, runs=True),
    Kind("metric", Metric, many=True, table="metrics", methods=("__call__",)),
)  # fmt: skip
#: Kind name → its record.
KIND: dict[str, Kind] = {k.name: k for k in KIND_RECORDS}
KINDS: tuple[str, ...] = tuple(KIND)
#: Kinds whose components may declare a ``probe``: the registry builds them small.
PROBE_KINDS: tuple[str, ...] = tuple(k.name for k in KIND_RECORDS if k.probed)
#: The keyword arguments the run passes to ``ComponentSpec.build`` besides the config.
BUILD_CONTEXT: dict[str, tuple[str, ...]] = {k.name: k.context for k in KIND_RECORDS}
