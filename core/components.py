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
from collections.abc import Callable
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
    """

    kind: str = attrs.field(validator=_check_kind)
    name: str = attrs.field(validator=_check_name)
    config: type = attrs.field(validator=_check_config)
    build: Callable[..., Any]
    summary: str = ""


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
    """A sampler: noise to images in [-1, 1] through a denoiser."""

    def num_evaluations(self, num_timesteps: int) -> int:
        """Network evaluations one call of :meth:`sample` makes for a schedule of this length."""
        ...

    def sample(
        self,
        denoiser: DenoiserLike,
        shape: tuple[int, ...],
        *,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
        cond: torch.Tensor | None = None,
        x_T: torch.Tensor | None = None,
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
