"""Component kinds, the registration record and the contracts components meet.

A *component* is a factory registered under a kind and a name, together with a frozen
attrs config class whose fields are the keys a recipe may set in that component's
table. Plugins provide components by returning :class:`ComponentSpec` records from the
``denoisekit_components`` hook.

The contracts are :class:`typing.Protocol` classes: authors need not inherit from them.
The registry and the conformance suites (``denoisekit.testing``) enforce them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs

if TYPE_CHECKING:
    import torch

#: Every component kind, in the order a run builds them.
KINDS: tuple[str, ...] = (
    "data",
    "schedule",
    "backbone",
    "loss",
    "optimizer",
    "lr_schedule",
    "sampler",
    "hook",
    "metric",
)

_NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]*$")


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


#: Kinds whose components may declare a ``probe``: the registry builds them small.
PROBE_KINDS: tuple[str, ...] = ("schedule", "backbone", "loss", "sampler", "hook")


def _check_probe(inst: ComponentSpec, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if inst.kind not in PROBE_KINDS:
        raise ValueError(
            f"probe of {inst.kind} {inst.name!r}: only {', '.join(PROBE_KINDS)} components "
            "can be probed"
        )
    if not isinstance(value, Mapping):
        raise TypeError(f"probe of {inst.kind} {inst.name!r} must be a dict of options: {value!r}")
    known = attrs.fields_dict(inst.config) if attrs.has(inst.config) else {}
    unknown = sorted(k for k in value if k not in known)
    if unknown:
        raise ValueError(
            f"probe of {inst.kind} {inst.name!r} sets unknown options {unknown}; the options "
            f"are {sorted(known)}"
        )


#: A problem a recipe check finds: ``(key path, message)``. The key path is relative to the
#: checked component's table (``"steps"`` of the sampler is reported as ``sampler.steps``).
Problem = tuple[str, str]

#: The facts components state about themselves for the others' checks (see
#: :attr:`ComponentSpec.facts`), by kind. A component may state others of its own.
FACTS: dict[str, dict[str, str]] = {
    "data": {
        "image_shape": "(C, H, W) of the training images",
        "num_classes": "number of classes of the labels (None: unlabelled, label -1)",
        "num_images": "images in the training split",
    },
    "schedule": {"num_timesteps": "T, the number of diffusion timesteps"},
    "optimizer": {"lr": "the base learning rate"},
}


@attrs.frozen(kw_only=True)
class CheckContext:
    """What a component's ``check`` sees of the recipe it is part of.

    Attributes:
        recipe: the whole :class:`denoisekit.host.recipe.Recipe`, every table already structured
            and valid on its own (``recipe.train.steps``, ``recipe.metrics``, ...).
        facts: kind → what that kind's component states from its config (:data:`FACTS`);
            a fact a component does not state is unknown, and checks needing it pass.
        table: the key path of the component being checked (``"sampler"``, ``"hooks.ema"``).
    """

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
        name: the registered name a recipe selects with ``type = "name"`` (lowercase).
        config: a frozen attrs class; its fields are the recipe keys of this component.
        build: the factory, called as ``build(config, **context)``; the context keywords
            for each kind are listed in :data:`BUILD_CONTEXT`.
        summary: one line shown by ``denoisekit plugins``.
        probe: options (a dict, overriding the config's defaults) for a small, cheap
            instance that the registry builds and exercises when it is constructed, to
            reject a component that breaks its contract before any run starts (see
            :func:`contract_problems`). Only for the kinds in :data:`PROBE_KINDS`. A
            backbone's probe config must set ``in_channels`` and ``image_size``; keep it
            tiny (the registry is built on every command). ``None``: no probe, only the
            static checks.
        facts: ``facts(config) -> dict``: what this component states about itself for the
            other components' checks, from its config alone (nothing loaded or built):
            a schedule its ``num_timesteps``, data its ``image_shape``, ... (:data:`FACTS`).
        check: ``check(config, context) -> iterable of (key, message)``: the problems of
            this component's options that only the rest of the recipe shows (a sampler's
            ``steps`` beyond the schedule's timesteps), or that only computing with them
            shows (a schedule whose betas underflow), found when the recipe is loaded,
            before any work. ``context`` is a :class:`CheckContext`; keys are relative to
            the component's table (``""``: the table itself). Keep it cheap. Checks of one
            option alone belong in its validator.
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


#: The keyword arguments the run passes to ``ComponentSpec.build`` besides the config.
BUILD_CONTEXT: dict[str, tuple[str, ...]] = {
    "data": ("root", "train"),  # root: folder of the recipe file (pathlib.Path); train: bool
    "schedule": (),
    "backbone": (),
    "loss": ("schedule",),
    "optimizer": ("params", "device"),  # params: iterable of parameters or param groups
    "lr_schedule": ("optimizer", "total_steps"),
    "sampler": (),
    "hook": (),
    "metric": (),
}


# --------------------------------------------------------------------------- contracts


class NoiseSchedule(Protocol):
    """A discrete-time variance-preserving noise schedule.

    ``alphas_cumprod[t]`` is alpha_bar at timestep ``t`` for ``t = 0 .. T-1`` (diffusers'
    indexing: index ``t`` is the paper's ``t + 1``), a float64 CPU tensor, strictly
    decreasing in (0, 1).
    """

    @property
    def num_timesteps(self) -> int: ...

    @property
    def alphas_cumprod(self) -> torch.Tensor: ...


class Backbone(Protocol):
    """An ``nn.Module`` mapping ``(x_t, t, cond=None)`` to a tensor of x_t's shape.

    ``t`` is a float tensor of shape ``(B,)`` holding timesteps in ``[0, T)`` (possibly
    fractional), or, for backbones configured for continuous conditioning, log-SNR values.
    """

    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor: ...


class Loss(Protocol):
    """Maps the model output and the batch to an unreduced per-sample loss of shape (B,)."""

    prediction_type: str  # "eps", "x0" or "v": what the backbone is trained to predict

    def __call__(
        self,
        model_output: torch.Tensor,
        *,
        x0: torch.Tensor,
        noise: torch.Tensor,
        t: torch.Tensor,
    ) -> torch.Tensor: ...


class DenoiserLike(Protocol):
    """What a sampler sees: a backbone wrapped with its schedule and prediction type."""

    schedule: NoiseSchedule

    def predict(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(eps, x0)`` estimates at integer timesteps ``t`` (shape ``(B,)``)."""
        ...


class SamplerLike(Protocol):
    """A sampler: the starting noise ``x_T`` (drawn by the host) to images in [-1, 1]
    through a denoiser, ending at t = 0; shape, device and dtype follow ``x_T``, which it
    must not modify. ``generator`` (one, or one per image) draws any noise of its own."""

    def num_evaluations(self, num_timesteps: int) -> int:
        """Network evaluations one call of :meth:`sample` makes for a schedule of this length."""
        ...

    def sample(
        self,
        denoiser: DenoiserLike,
        x_T: torch.Tensor,
        *,
        generator: torch.Generator | list[torch.Generator] | None,
        cond: torch.Tensor | None = None,
        callback: Callable[[dict[str, Any]], None] | None = None,
    ) -> torch.Tensor: ...


class DataLike(Protocol):
    """A map-style dataset of ``(image, label)`` pairs, images C×H×W in [-1, 1].

    ``label`` is an int (``-1`` where the data has none). ``num_classes`` is ``None`` for
    unlabelled data. ``image_shape`` is ``(C, H, W)``.
    """

    num_classes: int | None
    image_shape: tuple[int, int, int]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]: ...


class Metric(Protocol):
    """A metric computed on a trained model: returns a dict of named floats."""

    def __call__(self, context: Any) -> dict[str, float]: ...
