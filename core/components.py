"""Component kinds, the registration record and the contracts components meet.

A *component* is a factory registered under a kind and a name, together with a frozen
attrs config class whose fields are the keys a recipe may set in that component's
table. Plugins provide components by returning :class:`ComponentSpec` records from the
``denoisekit_components`` hook.

The contracts are :class:`typing.Protocol` classes: authors need not inherit from them.
The registry and the conformance suites (``denoisekit.testing``) enforce them.
"""

from __future__ import annotations

import inspect
import re
import typing
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
        recipe: the whole :class:`denoisekit.recipe.Recipe`, every table already structured
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


# --------------------------------------------------------------------------- contract checks
#
# The registry runs these on every component when it is built, so a broken plugin fails
# before a run starts, with an error naming it. They must stay cheap: the static checks
# build nothing; the probe checks build only components that declare a (small) probe.

_SAMPLER_METHODS: tuple[str, ...] = ("sample", "num_evaluations")
#: Methods the class a factory declares must have (methods live on classes, so missing ones
#: are visible without building anything; attributes set in ``__init__`` are not).
_REQUIRED_METHODS: dict[str, tuple[str, ...]] = {
    "sampler": _SAMPLER_METHODS,
    "loss": ("__call__",),
    "data": ("__len__", "__getitem__"),
    "optimizer": ("step", "zero_grad", "state_dict", "load_state_dict"),
    "lr_schedule": ("step", "state_dict", "load_state_dict"),
    "metric": ("__call__",),
}
_PROBE_CACHE: dict[tuple[Any, ...], tuple[str, ...]] = {}


def contract_problems(spec: ComponentSpec) -> list[str]:
    """What ``spec`` gets wrong about its kind's contract (empty when nothing is seen).

    Static checks, for every component (nothing is built):

    * ``build`` is callable and accepts ``(config, **context)`` with the context keywords
      of its kind (:data:`BUILD_CONTEXT`);
    * the class ``build`` produces, when it says which (``build`` is a class, or declares
      a return type): a sampler's has ``sample`` and ``num_evaluations`` methods; a
      backbone's is an ``nn.Module``; a hook's methods marked ``@denoisekit.hookimpl``
      implement hooks that exist, with arguments those hooks have.

    Probe checks, for components with a ``probe`` (built once per process, small): the
    instance is exercised — a backbone's output must have the shape of a probe input
    ``(2, in_channels, image_size, image_size)``; a sampler's methods exist; a schedule's
    ``alphas_cumprod`` has ``num_timesteps`` entries; a loss has a known
    ``prediction_type`` and returns one value per sample; a hook registers cleanly.
    The full behavioural checks are the conformance suites of :mod:`denoisekit.testing`.
    """
    if not callable(spec.build):
        return [f"build must be callable, got {spec.build!r}"]
    for field in ("facts", "check"):
        value = getattr(spec, field)
        if value is not None and not callable(value):
            return [f"{field} must be callable or None, got {value!r}"]
    problems = _signature_problems(spec)
    product = _declared_product(spec.build)
    if product is not None:
        problems += _class_problems(spec.kind, product)
    if spec.probe is not None and not problems:
        problems += _cached_probe(spec)
    return problems


def _signature_problems(spec: ComponentSpec) -> list[str]:
    context = BUILD_CONTEXT[spec.kind]
    try:
        signature = inspect.signature(spec.build)
    except (TypeError, ValueError):  # builtins and some C callables have none: trust them
        return []
    try:
        signature.bind(object(), **dict.fromkeys(context))
    except TypeError as exc:
        keywords = "".join(f", {k}=..." for k in context)
        return [f"build must accept (config{keywords}) ({exc})"]
    return []


def _declared_product(build: Callable[..., Any]) -> type | None:
    """The class ``build`` returns, when it says: a class itself, or its return annotation."""
    if isinstance(build, type):
        return build
    try:
        hints = typing.get_type_hints(build)
    except Exception:  # unresolvable annotations (TYPE_CHECKING imports): nothing to check
        return None
    product = hints.get("return")
    return product if isinstance(product, type) else None


def _class_problems(kind: str, cls: type) -> list[str]:
    missing = [m for m in _REQUIRED_METHODS.get(kind, ()) if not callable(getattr(cls, m, None))]
    if missing:
        need = {
            "sampler": "; a sampler needs sample(denoiser, shape, *, generator, device, cond, "
            "x_T, callback) and num_evaluations(num_timesteps)",
            "loss": "; a loss is called as loss(model_output, *, x0, noise, t)",
        }.get(kind, "")
        return [f"{cls.__name__} has no {' or '.join(f'{m}()' for m in missing)}{need}"]
    if kind == "backbone":
        from torch import nn

        if not issubclass(cls, nn.Module):
            return [f"{cls.__name__} is not a torch.nn.Module; a backbone must be one"]
    elif kind == "hook":
        return _hook_class_problems(cls)
    return []


def hook_problems(hook: Any) -> list[str]:
    """What a built hook component (or its class) gets wrong: ``@hookimpl`` methods naming
    a hook that does not exist, or arguments their hook does not pass."""
    return _hook_class_problems(hook if isinstance(hook, type) else type(hook))


def _hook_class_problems(cls: type) -> list[str]:
    from denoisekit import hookspecs

    problems = []
    marker = f"{hookspecs.PROJECT}_impl"
    for attr_name in dir(cls):
        if attr_name.startswith("__"):
            continue
        method = getattr(cls, attr_name, None)
        opts = getattr(method, marker, None)
        if opts is None:
            continue
        hook = opts.get("specname") or attr_name
        spec_fn = getattr(hookspecs, hook, None)
        if not hook.startswith("denoisekit_") or spec_fn is None:
            from denoisekit.suggest import did_you_mean

            known = [n for n in dir(hookspecs) if n.startswith("denoisekit_")]
            problems.append(
                f"{cls.__name__}.{attr_name} implements unknown hook {hook!r}"
                f"{did_you_mean(hook, known)}"
            )
            continue
        try:
            params = list(inspect.signature(method).parameters)
        except (TypeError, ValueError):
            continue
        if params and not isinstance(inspect.getattr_static(cls, attr_name), staticmethod):
            params = params[1:]  # self
        allowed = set(inspect.signature(spec_fn).parameters)
        extra = [p for p in params if p not in allowed]
        if extra:
            from denoisekit.suggest import did_you_mean

            problems.append(
                f"{cls.__name__}.{attr_name} asks for {extra}, which hook {hook} does not pass "
                f"(it passes {sorted(allowed)}){did_you_mean(extra[0], sorted(allowed))}"
            )
    return problems


def _cached_probe(spec: ComponentSpec) -> list[str]:
    try:
        key = (spec.kind, spec.name, spec.config, spec.build, repr(sorted(spec.probe.items())))
        hash(key)
    except TypeError:  # an unhashable factory: probe every time
        return _probe(spec)
    if key not in _PROBE_CACHE:
        _PROBE_CACHE[key] = tuple(_probe(spec))
    return list(_PROBE_CACHE[key])


def _probe(spec: ComponentSpec) -> list[str]:
    """Build the probe instance and exercise it (the global RNG state is left untouched)."""
    import torch

    try:
        config = spec.config(**spec.probe)
    except Exception as exc:
        return [f"probe options {dict(spec.probe)!r} do not make a valid config: {exc}"]
    if spec.kind == "backbone":
        size = [getattr(config, k, None) for k in ("in_channels", "image_size")]
        if not all(isinstance(v, int) and v > 0 for v in size):
            return [
                "a backbone's config needs in_channels and image_size options (positive ints; "
                "the run reads them for the image shape) to be probed"
            ]
    context: dict[str, Any] = {}
    if spec.kind == "loss":
        from denoisekit.diffusion import DiscreteSchedule

        context["schedule"] = DiscreteSchedule.from_betas(torch.linspace(1e-4, 0.2, 10))
    # Tiny tensors: one thread (spinning OpenMP workers make them ~100x slower on a busy
    # CPU), and a forked RNG so that probing never shifts a run's random numbers.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            try:
                built = spec.build(config, **context)
            except Exception as exc:
                return [f"building the probe failed: {type(exc).__name__}: {exc}"]
            try:
                return _PROBES[spec.kind](built, config)
            except Exception as exc:
                return [f"the probe failed: {type(exc).__name__}: {exc}"]
    finally:
        torch.set_num_threads(threads)


def _probe_sampler(sampler: Any, config: Any) -> list[str]:
    missing = [m for m in _SAMPLER_METHODS if not callable(getattr(sampler, m, None))]
    if missing:
        return [
            f"the built {type(sampler).__name__} has no {' or '.join(f'{m}()' for m in missing)}"
        ]
    return []


def _probe_schedule(schedule: Any, config: Any) -> list[str]:
    import torch

    T = getattr(schedule, "num_timesteps", None)
    ab = getattr(schedule, "alphas_cumprod", None)
    if not isinstance(T, int) or T <= 0:
        return [f"num_timesteps must be a positive int, got {T!r}"]
    if not isinstance(ab, torch.Tensor) or tuple(ab.shape) != (T,):
        shape = tuple(ab.shape) if isinstance(ab, torch.Tensor) else type(ab).__name__
        return [f"alphas_cumprod must be a tensor of shape ({T},), got {shape}"]
    return []


def _probe_loss(loss: Any, config: Any) -> list[str]:
    import torch

    from denoisekit.denoiser import PREDICTION_TYPES

    pt = getattr(loss, "prediction_type", None)
    if pt not in PREDICTION_TYPES:
        return [f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {pt!r}"]
    x0 = torch.zeros(2, 1, 2, 2)
    value = loss(torch.zeros_like(x0), x0=x0, noise=torch.ones_like(x0), t=torch.tensor([0, 9]))
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != (2,):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        return [f"the loss must return one value per sample, shape (B,) = (2,); got {shape}"]
    return []


def _probe_backbone(model: Any, config: Any) -> list[str]:
    import torch

    if not isinstance(model, torch.nn.Module):
        return [f"the built {type(model).__name__} is not a torch.nn.Module"]
    shape = (2, config.in_channels, config.image_size, config.image_size)
    x_t = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    if getattr(model, "time_input", "timestep") == "log_snr":
        t = torch.tensor([4.0, -4.0])
    else:
        t = torch.tensor([0.0, 9.0])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x_t, t)
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.shape != x_t.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return [
            f"on a probe input of shape {shape} the backbone returned {got}; it must return "
            "a tensor of its input's shape"
        ]
    if not bool(torch.isfinite(out).all()):
        return [f"on a probe input of shape {shape} the backbone returned non-finite values"]
    return []


def _probe_hook(hook: Any, config: Any) -> list[str]:
    import pluggy

    from denoisekit import hookspecs

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    try:
        pm.register(hook, name="probe")
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        return [str(exc).replace("\n", " ")]
    if not pm.get_hookcallers(hook):
        return [f"the built {type(hook).__name__} implements no hook (@denoisekit.hookimpl)"]
    return []


_PROBES: dict[str, Callable[[Any, Any], list[str]]] = {
    "sampler": _probe_sampler,
    "schedule": _probe_schedule,
    "loss": _probe_loss,
    "backbone": _probe_backbone,
    "hook": _probe_hook,
}
