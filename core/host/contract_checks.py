"""Contract checks: what a registered component gets wrong about its kind's contract.

Static checks run on every component when the registry is built; components that declare
a ``probe`` are also built once per process on a tiny input and exercised.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

from denoisekit.contracts import KIND, Backbone, BackboneConfig, ComponentSpec, optional
from denoisekit.host.signatures import signature_problems

# --------------------------------------------------------------------------- contract checks
#
# The registry runs these on every component when it is built, so a broken plugin fails
# before a run starts, with an error naming it. They must stay cheap: the static checks
# build nothing; the probe checks build only components that declare a (small) probe.

_PROBE_CACHE: dict[tuple[Any, ...], tuple[str, ...]] = {}


def contract_problems(spec: ComponentSpec) -> list[str]:
    """What ``spec`` gets wrong about its kind's contract (empty when nothing is seen).

    Static checks, for every component (nothing is built):

    * ``build`` is callable and accepts ``(config, **context)`` with the context keywords
      of its kind (``Kind.context``);
    * the class ``build`` produces, when it says which (``build`` is a class, or declares
      a return type), has the methods of its kind (``Kind.methods``: a sampler's
      ``sample`` and ``num_evaluations``, ...), with the signatures of its kind's contract
      (:func:`~denoisekit.host.signatures.signature_problems`); a backbone's is an
      ``nn.Module``; a hook's methods marked ``@denoisekit.hookimpl`` implement hooks that
      exist, with arguments those hooks have.

    Probe checks, for components with a ``probe`` (built once per process, small): the
    instance's method signatures are checked, then it is exercised — a backbone's output
    must have the shape of a probe input ``(2, in_channels, image_size, image_size)``; a
    sampler's methods exist; a schedule's ``alphas_cumprod`` has ``num_timesteps`` entries;
    a loss has a known ``prediction_type`` and returns one value per sample; a hook
    registers cleanly; an autoencoder's latents have its ``latent_shape``, it decodes them
    to the input's shape, and ``shift``/``scale`` are in its state dict.
    The full behavioural checks are the conformance suites of :mod:`denoisekit.testing`.
    """
    if not callable(spec.build):
        return [f"build must be callable, got {spec.build!r}"]
    for field in ("facts", "check"):
        value = getattr(spec, field)
        if value is not None and not callable(value):
            return [f"{field} must be callable or None, got {value!r}"]
    problems = _signature_problems(spec)
    product = declared_product(spec.build)
    if product is not None:
        problems += _class_problems(spec.kind, product)
    if spec.probe is not None and not problems:
        problems += _cached_probe(spec)
    return problems


def _signature_problems(spec: ComponentSpec) -> list[str]:
    context = KIND[spec.kind].context
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


def declared_product(build: Callable[..., Any]) -> type | None:
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
    missing = [m for m in KIND[kind].methods if not callable(getattr(cls, m, None))]
    if missing:
        need = {
            "sampler": "; a sampler needs sample(denoiser, x_T, *, generator, cond, callback) "
            "and num_evaluations(num_timesteps)",
            "loss": "; a loss is called as loss(model_output, *, x0, noise, t)",
        }.get(kind, "")
        return [f"{cls.__name__} has no {' or '.join(f'{m}()' for m in missing)}{need}"]
    if kind == "backbone":
        from torch import nn

        if not issubclass(cls, nn.Module):
            return [f"{cls.__name__} is not a torch.nn.Module; a backbone must be one"]
    elif kind == "hook":
        return _hook_class_problems(cls)
    return signature_problems(kind, cls)


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
            from denoisekit.host.suggest import did_you_mean

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
            from denoisekit.host.suggest import did_you_mean

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
        size = [optional(config, BackboneConfig, k) for k in ("in_channels", "image_size")]
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
            problems = signature_problems(spec.kind, built)
            if problems:
                return problems
            try:
                return PROBES[spec.kind](built, config)
            except Exception as exc:
                return [f"the probe failed: {type(exc).__name__}: {exc}"]
    finally:
        torch.set_num_threads(threads)


def _probe_sampler(sampler: Any, config: Any) -> list[str]:
    missing = [m for m in KIND["sampler"].methods if not callable(getattr(sampler, m, None))]
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
    if optional(model, Backbone, "time_input") == "log_snr":
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


def _probe_autoencoder(model: Any, config: Any) -> list[str]:
    import torch

    if not isinstance(model, torch.nn.Module):
        return [f"the built {type(model).__name__} is not a torch.nn.Module"]
    C = getattr(config, "in_channels", None)
    if not isinstance(C, int) or C <= 0:
        return ["an autoencoder's config needs an in_channels option (a positive int) to be probed"]
    for size in (8, 16, 32, 64):  # the first square size it takes
        try:
            latent = tuple(model.latent_shape((C, size, size)))
            break
        except ValueError:
            continue
    else:
        return [f"latent_shape refuses {C}×S×S images for every probe size S in 8, 16, 32, 64"]
    x = torch.randn(2, C, size, size, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            z = model.encode(x).mode()
            out = model.decode(z)
    finally:
        model.train(was_training)
    where = f"on probe images of shape {tuple(x.shape)}"
    if tuple(z.shape) != (2, *latent):
        return [f"{where} encode gave latents {tuple(z.shape)}; latent_shape says {latent}"]
    if out.shape != x.shape:
        return [f"{where} decode(encode(x).mode()) gave {tuple(out.shape)}"]
    state = model.state_dict()
    for name in ("shift", "scale"):
        if name not in state or tuple(state[name].shape) != latent[:1]:
            return [f"{name} must be a buffer of shape ({latent[0]},) in its state dict"]
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


#: kind → its probe: ``_probe_<kind>(built, config) -> problems``, for every probed kind.
PROBES: dict[str, Callable[[Any, Any], list[str]]] = {
    kind.name: globals()[f"_probe_{kind.name}"] for kind in KIND.values() if kind.probed
}
