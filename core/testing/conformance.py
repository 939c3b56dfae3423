"""Conformance checks: what every component of a kind must do, the built-ins' and yours.

Plain functions that raise :class:`AssertionError` with a message saying what broke, so
they work under pytest and in a plugin author's own scripts alike::

    from denoisekit.testing.conformance import check_sampler
    from my_plugin import denoisekit_components

    @pytest.mark.parametrize("spec", denoisekit_components(), ids=lambda s: s.name)
    def test_my_sampler(spec):
        check_sampler(spec)

Whatever the component raises, a check raises :class:`AssertionError` naming the component
and the property it was checking (the component's exception is its ``__cause__``); the
first property of every check of a built component is its contract's method signatures
(:func:`denoisekit.host.signatures.signature_problems`, what the registry checks too).

Every check builds the component from ``spec.build(config)`` (``config`` defaults to the
config class's defaults, or for :func:`check_backbone` and the newer checks to the spec's
small ``probe`` options: :func:`default_config`) and uses tiny deterministic inputs (a toy
backbone on a short schedule for samplers): fast on a CPU, no randomness outside the
generators handed to the component. :func:`check_component` picks the check of a spec's
kind; the ``denoisekit.testing`` pytest plugin runs them over a plugin's components.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import cattrs
import torch

from denoisekit.contracts import (
    KIND_RECORDS,
    Backbone,
    BackboneConfig,
    ComponentSpec,
    optional,
)
from denoisekit.denoiser import PREDICTION_TYPES, Denoiser
from denoisekit.diffusion import DiscreteSchedule, randn
from denoisekit.engine.inpainting import inpainting_denoiser
from denoisekit.engine.steering import GuidedDenoiser
from denoisekit.host.signatures import signature_problems
from denoisekit.host.suggest import exception_line

__all__ = [
    "CHECKS",
    "ToyBackbone",
    "check_autoencoder",
    "check_backbone",
    "check_component",
    "check_config_roundtrip",
    "check_hook",
    "check_loss",
    "check_lr_schedule",
    "check_optimizer",
    "check_sampler",
    "check_schedule",
    "default_config",
    "single_thread",
    "spec_id",
    "toy_schedule",
]

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread inside the block, then the previous count.

    Test tensors are tiny: intra-op parallelism only adds overhead, and on a busy machine
    spinning OpenMP workers make each small operation up to ~100x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


#: The property the running check is at: what an exception the component raises is
#: reported as (:func:`_conformance_check`).
_PROPERTY: contextvars.ContextVar[str] = contextvars.ContextVar("property", default="")


def _checking(prop: str) -> None:
    """Say which property the running check checks from here on."""
    _PROPERTY.set(prop)


def _conformance_check(check: F) -> F:
    """A check: single-threaded, and any exception but an AssertionError becomes one that
    names the component and the property being checked (the exception its cause)."""

    @functools.wraps(check)
    def wrapper(spec: ComponentSpec, *args: Any, **kwargs: Any) -> Any:
        token = _PROPERTY.set("building it (spec.build)")
        try:
            with single_thread():
                return check(spec, *args, **kwargs)
        except AssertionError:
            raise
        except Exception as exc:
            raise AssertionError(
                f"{spec.kind} {spec.name!r}: {_PROPERTY.get()}: it raised {exception_line(exc)}"
            ) from exc
        finally:
            _PROPERTY.reset(token)

    return wrapper  # type: ignore[return-value]


def _check_signatures(spec: ComponentSpec, built: Any) -> None:
    problems = signature_problems(spec.kind, built)
    assert not problems, f"{spec.kind} {spec.name!r}: its contract's signatures: {problems[0]}"


# --------------------------------------------------------------------------- fixtures


def toy_schedule(num_timesteps: int = 20) -> DiscreteSchedule:
    """A short cosine-shaped schedule (Nichol & Dhariwal 2021), built here without plugins."""
    s = 0.008

    def f(t: float) -> float:
        return math.cos((t / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - f(i + 1) / f(i), 0.999) for i in range(num_timesteps)]
    return DiscreteSchedule.from_betas(betas)


class ToyBackbone(torch.nn.Module):
    """A fixed, purely elementwise map ``(x_t, t, cond) -> output`` that counts its calls.

    ``out = w[c] * x_t + 0.05 * sin(0.3 * t)``, plus ``0.01 * cond`` per image when given.
    Elementwise (no reductions, no cross-image mixing), so image ``i`` of a batch does not
    depend on the others or on the batch size, bit for bit.
    """

    time_input = "timestep"

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("w", torch.linspace(0.2, 0.8, channels))
        self.calls = 0

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        self.calls += 1
        if t.shape != (x_t.shape[0],):
            raise AssertionError(f"backbone got time of shape {tuple(t.shape)}, expected (B,)")
        shape = (-1, *([1] * (x_t.ndim - 1)))
        w = self.w.to(x_t.dtype).reshape(1, -1, *([1] * (x_t.ndim - 2)))
        out = w * x_t + 0.05 * torch.sin(0.3 * t.to(x_t.dtype)).reshape(shape)
        if cond is not None:
            out = out + 0.01 * cond.to(x_t.dtype).reshape(shape)
        return out


def _build(spec: ComponentSpec, config: Any, **context: Any) -> Any:
    if config is None:
        try:
            config = spec.config()
        except TypeError as e:  # a required option without a default
            raise AssertionError(
                f"{spec.kind} {spec.name!r}: pass `config=` (its config class has required "
                f"options: {e})"
            ) from e
    return spec.build(config, **context)


# --------------------------------------------------------------------------- checks


@_conformance_check
def check_config_roundtrip(spec: ComponentSpec, config: Any = None) -> None:
    """The config survives cattrs unstructure → structure unchanged (what recipes rely on)."""
    _checking("its config's cattrs round trip")
    config = spec.config() if config is None else config
    converter = cattrs.Converter(forbid_extra_keys=True)
    data = converter.unstructure(config)
    back = converter.structure(data, spec.config)
    assert back == config, (
        f"{spec.kind} {spec.name!r}: config {config!r} does not survive a cattrs round trip "
        f"(got {back!r} from {data!r})"
    )


@_conformance_check
def check_schedule(spec: ComponentSpec, config: Any = None) -> None:
    """A schedule builds a T-step, float64 CPU ``alpha_bar`` strictly decreasing in (0, 1)."""
    name = f"schedule {spec.name!r}"
    check_config_roundtrip(spec, config)
    sched = _build(spec, config)
    _checking("alphas_cumprod: T float64 CPU values strictly decreasing in (0, 1)")
    T = sched.num_timesteps
    assert isinstance(T, int) and T > 0, f"{name}: num_timesteps must be a positive int: {T!r}"
    ab = sched.alphas_cumprod
    assert isinstance(ab, torch.Tensor), f"{name}: alphas_cumprod must be a tensor"
    assert ab.dtype == torch.float64, f"{name}: alphas_cumprod must be float64, is {ab.dtype}"
    assert ab.device.type == "cpu", f"{name}: alphas_cumprod must live on the CPU"
    assert tuple(ab.shape) == (T,), (
        f"{name}: alphas_cumprod has shape {tuple(ab.shape)}, not ({T},)"
    )
    assert bool(((ab > 0) & (ab < 1)).all()), f"{name}: alphas_cumprod leaves (0, 1)"
    assert bool((ab[1:] < ab[:-1]).all()), f"{name}: alphas_cumprod is not strictly decreasing"


@_conformance_check
def check_loss(spec: ComponentSpec, config: Any = None, *, seed: int = 0) -> None:
    """A loss returns a finite, differentiable ``(B,)`` loss, 0 exactly at its target.

    The target for each ``prediction_type`` is derived here: ``eps`` → the noise, ``x0`` →
    the clean batch, ``v`` → ``sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0``.
    """
    name = f"loss {spec.name!r}"
    check_config_roundtrip(spec, config)
    sched = toy_schedule(20)
    loss = _build(spec, config, schedule=sched)
    _check_signatures(spec, loss)
    _checking("prediction_type")
    pt = getattr(loss, "prediction_type", None)
    assert pt in PREDICTION_TYPES, (
        f"{name}: prediction_type must be one of {PREDICTION_TYPES}: {pt!r}"
    )
    g = torch.Generator().manual_seed(seed)
    B = 5
    x0 = torch.rand(B, 2, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(B, 2, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 3, 9, 14, 19])
    ab = sched.alphas_cumprod[t].view(B, 1, 1, 1)
    target = {"eps": noise, "x0": x0, "v": ab.sqrt() * noise - (1 - ab).sqrt() * x0}[pt]

    _checking("a (B,) loss, 0 exactly at the target")
    exact = loss(target.clone(), x0=x0, noise=noise, t=t)
    assert tuple(exact.shape) == (B,), (
        f"{name}: loss must have shape (B,) = ({B},), got {tuple(exact.shape)}"
    )
    assert float(exact.abs().max()) < 1e-12, (
        f"{name}: loss is not 0 when the output equals the {pt} target: {exact.tolist()}"
    )
    _checking("a finite, positive, differentiable loss away from the target")
    out = (
        target + 0.1 * torch.randn(target.shape, generator=g, dtype=torch.float64)
    ).requires_grad_()
    value = loss(out, x0=x0, noise=noise, t=t)
    assert tuple(value.shape) == (B,), (
        f"{name}: loss must have shape (B,), got {tuple(value.shape)}"
    )
    assert bool(torch.isfinite(value).all()) and bool((value > 0).all()), (
        f"{name}: loss away from the target must be finite and > 0: {value.tolist()}"
    )
    value.sum().backward()
    assert out.grad is not None and bool(torch.isfinite(out.grad).all()), (
        f"{name}: the loss must be differentiable w.r.t. the model output"
    )
    # Per-sample: sample 0's loss must not depend on the other samples.
    _checking("one loss per sample, independent of the batch")
    alone = loss(out.detach()[:1], x0=x0[:1], noise=noise[:1], t=t[:1])
    torch.testing.assert_close(
        alone,
        value.detach()[:1],
        msg=lambda m: f"{name}: loss of sample 0 depends on the batch: {m}",
    )


@_conformance_check
def check_sampler(
    spec: ComponentSpec,
    config: Any = None,
    *,
    num_timesteps: int = 100,
    shape: tuple[int, ...] = (3, 2, 4, 4),
) -> None:
    """Check a sampler's contract on a toy backbone and a ``num_timesteps`` schedule.

    Calls ``sample(denoiser, x_T, generator=..., ...)`` as the host does: ``x_T`` drawn
    with :func:`denoisekit.diffusion.randn` from the generator(s) then passed along.
    Asserts: the config round-trips through cattrs; output shape, dtype and device those
    of ``x_T`` (float32, and float64), finite values in [-1, 1]; bit-for-bit
    determinism under a fixed seed; with a list of per-image generators, image ``i`` does
    not depend on the batch size; the network evaluations made equal
    ``num_evaluations(T)``; ``x_T`` is used and not modified; the callback gets ``i``,
    ``t``, ``x_t`` and ``x0``; every prediction type works; conditioning is passed through;
    with classifier-free guidance (the denoiser's) one forward per step, scale 1 exact;
    with inpainting through the denoiser (DDNM's projection, MMPS's posterior estimate)
    one forward per step, every ``x0`` estimate keeps the known pixels, and a mask with
    nothing known gives the plain samples; the output stays in the denoiser's
    ``data_range`` and is not clamped where it is None (latent space).
    """
    name = f"sampler {spec.name!r}"
    check_config_roundtrip(spec, config)
    sampler = _build(spec, config)
    _check_signatures(spec, sampler)
    sched = toy_schedule(num_timesteps)
    B = shape[0]
    assert B >= 2, "check_sampler needs a batch of at least 2"

    def run(pt: str = "eps", **kwargs: Any) -> tuple[torch.Tensor, ToyBackbone, Denoiser]:
        model = ToyBackbone(shape[1])
        den = Denoiser(model, sched, pt)
        generator = kwargs.pop("generator", None) or torch.Generator().manual_seed(0)
        x_T = kwargs.pop("x_T", None)
        if x_T is None:  # the host's draw: per image with a list of generators
            x_T = randn(kwargs.pop("shape", shape), generator)
        out = sampler.sample(den, x_T, generator=generator, **kwargs)
        assert isinstance(out, torch.Tensor), f"{name}: sample must return a tensor, not {out!r}"
        assert out.device == x_T.device, f"{name}: output on {out.device}, x_T on {x_T.device}"
        return out, model, den

    # 1. shape, dtype, range; evaluations counted.
    _checking("1. shape, dtype and range of the output; evaluations counted")
    expected = sampler.num_evaluations(num_timesteps)
    assert isinstance(expected, int) and expected > 0, (
        f"{name}: num_evaluations({num_timesteps}) must be a positive int: {expected!r}"
    )
    out, model, den = run()
    assert tuple(out.shape) == shape, f"{name}: output shape {tuple(out.shape)} != {shape}"
    assert out.dtype == torch.float32, f"{name}: output dtype {out.dtype} != torch.float32"
    assert bool(torch.isfinite(out).all()), f"{name}: output is not finite"
    lo, hi = float(out.min()), float(out.max())
    assert lo >= -1.0 and hi <= 1.0, f"{name}: output leaves [-1, 1]: [{lo}, {hi}]"
    assert model.calls == expected, (
        f"{name}: made {model.calls} network evaluations, num_evaluations({num_timesteps}) "
        f"says {expected}"
    )
    assert den.num_evaluations == expected, (
        f"{name}: Denoiser.num_evaluations is {den.num_evaluations}, expected {expected}"
    )

    # 2. determinism under a fixed seed.
    _checking("2. determinism under a fixed seed")
    again, _, _ = run()
    assert torch.equal(out, again), f"{name}: two runs with the same seed differ"

    # 3. per-image generators: image i independent of the batch size and position.
    _checking("3. per-image generators: image i independent of the batch")
    def gens(seeds: list[int]) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(s) for s in seeds]

    seeds = [11 + i for i in range(B)]
    batch, _, _ = run(generator=gens(seeds))
    single, _, _ = run(generator=gens(seeds[1:2]), shape=(1, *shape[1:]))
    torch.testing.assert_close(
        single[0],
        batch[1],
        rtol=0,
        atol=1e-6,
        msg=lambda m: f"{name}: with per-image generators, image 1 depends on the batch: {m}",
    )
    other, _, _ = run(generator=gens([s + 100 for s in seeds]))
    assert not torch.equal(other, batch), f"{name}: output does not depend on the generators"

    # 4. x_T: used, kept unmodified, dtype followed.
    _checking("4. x_T used, left unmodified, its dtype followed")
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x_T_copy = x_T.clone()
    out64, _, _ = run(x_T=x_T)
    assert torch.equal(x_T, x_T_copy), f"{name}: sample modified the x_T it was given"
    assert out64.dtype == torch.float64, (
        f"{name}: float64 x_T gave a {out64.dtype} output (dtype must follow x_T)"
    )
    assert tuple(out64.shape) == shape and bool(torch.isfinite(out64).all()), (
        f"{name}: bad output for a float64 x_T"
    )
    out_other, _, _ = run(x_T=x_T * 0.5)
    assert not torch.equal(out64, out_other), f"{name}: the output ignores x_T"

    # 5. callback.
    _checking("5. the callback, once per step")
    seen: list[dict[str, Any]] = []
    run(callback=seen.append)
    assert seen, f"{name}: callback was never called"
    for info in seen:
        missing = {"i", "t", "x_t", "x0"} - set(info)
        assert not missing, f"{name}: callback dict lacks {sorted(missing)}"
        for key in ("x_t", "x0"):
            assert tuple(info[key].shape) == shape, (
                f"{name}: callback {key!r} has shape {tuple(info[key].shape)}, expected {shape}"
            )
    assert [info["i"] for info in seen] == list(range(len(seen))), (
        f"{name}: callback 'i' must count steps from 0"
    )

    # 6. every prediction type, and conditioning reaches the backbone.
    _checking("6. every prediction type; cond passed through")
    for pt in PREDICTION_TYPES:
        o, _, _ = run(pt)
        assert bool(torch.isfinite(o).all()) and float(o.abs().max()) <= 1.0, (
            f"{name}: bad output with prediction_type={pt!r}"
        )
    cond = torch.arange(B, dtype=torch.float32) + 1.0
    with_cond, _, _ = run(cond=cond)
    assert not torch.equal(with_cond, out), f"{name}: cond did not reach the backbone"

    # 7. classifier-free guidance through the denoiser: one forward (of 2B) per step, and
    #    scale 1 is exactly the conditional sampler.
    _checking("7. classifier-free guidance through the denoiser")
    labels = torch.arange(B) % 3
    x_T = randn(shape, torch.Generator().manual_seed(7))
    conditional = sampler.sample(
        Denoiser(ToyBackbone(shape[1]), sched),
        x_T,
        generator=torch.Generator().manual_seed(0),
        cond=labels,
    )
    for scale in (1.0, 3.0):
        model = ToyBackbone(shape[1])
        guided = GuidedDenoiser(model, sched, scale=scale)
        o = sampler.sample(guided, x_T, generator=torch.Generator().manual_seed(0), cond=labels)
        assert model.calls == expected, (
            f"{name}: guided sampling made {model.calls} forwards, expected {expected}"
        )
        assert bool(torch.isfinite(o).all()) and float(o.abs().max()) <= 1.0, (
            f"{name}: bad output with guidance scale {scale}"
        )
        assert torch.equal(o, conditional) is (scale == 1.0), (
            f"{name}: guidance scale {scale} must {'' if scale == 1 else 'not '}give the "
            "conditional samples"
        )

    # 8. inpainting through the denoiser: the sampler uses the corrected x0 it is given.
    _checking("8. inpainting through the denoiser (DDNM, MMPS)")
    known = torch.rand(shape, generator=torch.Generator().manual_seed(8)) * 1.6 - 0.8
    x_T = randn(shape, torch.Generator().manual_seed(7))
    plain = sampler.sample(
        Denoiser(ToyBackbone(shape[1]), sched), x_T, generator=torch.Generator().manual_seed(0)
    )
    odd_columns = (torch.arange(shape[-1]) % 2).to(torch.float32)
    for method in ("ddnm", "mmps"):
        for mask in (odd_columns.expand(1, 1, *shape[2:]), torch.ones(1, 1, *shape[2:])):
            model, seen = ToyBackbone(shape[1]), []
            den = inpainting_denoiser(method, Denoiser(model, sched), known, mask, x_T)
            o = sampler.sample(
                den, x_T, generator=torch.Generator().manual_seed(0), callback=seen.append
            )
            assert model.calls == expected, (
                f"{name}: inpainting ({method}) made {model.calls} forwards, expected {expected}"
            )
            assert bool(torch.isfinite(o).all()) and float(o.abs().max()) <= 1.0, (
                f"{name}: bad output when inpainting ({method})"
            )
            keep = (mask == 0).expand(shape)
            assert all(torch.equal(info["x0"][keep], known[keep]) for info in seen), (
                f"{name}: the x0 estimates it reports must be the denoiser's, which keep the "
                f"known pixels ({method})"
            )
            if not bool(keep.any()):
                torch.testing.assert_close(
                    o,
                    plain,
                    rtol=0,
                    atol=1e-6,
                    msg=lambda m, method=method: (
                        f"{name}: inpainting ({method}) with nothing known must give the "
                        f"plain samples: {m}"
                    ),
                )

    # 9. the data range is the denoiser's: [-0.5, 0.5] is kept; None (latents) not clamped.
    _checking("9. the denoiser's data_range: kept, and no clamp in latent space (None)")
    x_T = randn(shape, torch.Generator().manual_seed(9)) * 20.0
    for bounds in ((-0.5, 0.5), None):
        den = Denoiser(ToyBackbone(shape[1]), sched, data_range=bounds)
        o = sampler.sample(den, x_T, generator=torch.Generator().manual_seed(0))
        top = float(o.abs().max())
        assert bool(torch.isfinite(o).all()), f"{name}: not finite with data_range={bounds}"
        if bounds is not None:
            assert top <= 0.5, f"{name}: output leaves the denoiser's data_range {bounds}: {top}"
        else:
            assert top > 1.0, (
                f"{name}: clamps latents: with data_range None (latent space) the output must "
                f"not be clamped to [-1, 1] (max |x| {top}); use denoisekit.denoiser.clip_to_range"
            )


def spec_id(spec: ComponentSpec) -> str:
    """A readable pytest id for a component spec: ``kind:name``."""
    return f"{spec.kind}:{spec.name}"


def default_config(spec: ComponentSpec) -> Any:
    """The config the checks use when none is given: the spec's probe options, else defaults.

    A backbone's defaults may be a large network (the ``unet`` defaults are the 35.7M
    CIFAR-10 model), so a spec's ``probe`` (small by design) is preferred.
    """
    try:
        return spec.config(**(spec.probe or {}))
    except TypeError as e:  # a required option without a default
        raise AssertionError(
            f"{spec.kind} {spec.name!r}: pass `config=` (its config class has required "
            f"options: {e})"
        ) from e


@_conformance_check
def check_backbone(spec: ComponentSpec, config: Any = None, *, batch: int = 3) -> None:
    """A backbone is an ``nn.Module`` mapping ``(x_t, t, cond)`` to a tensor of x_t's shape.

    On a ``(batch, in_channels, image_size, image_size)`` input (the config must have
    those options: the run reads them) asserts: the output has the input's shape and dtype
    and is finite; evaluation is deterministic; image ``i`` does not depend on the rest of
    the batch (eval mode); every parameter receives a finite gradient; with its parameters
    perturbed (so zero-initialized output layers do not hide anything) the output depends
    on ``x_t`` and on ``t``; class conditioning (when ``model.num_classes`` is set) is
    accepted and changes the output. ``config`` defaults to :func:`default_config`.
    """
    name = f"backbone {spec.name!r}"
    config = default_config(spec) if config is None else config
    check_config_roundtrip(spec, config)
    C, S = (optional(config, BackboneConfig, k) for k in ("in_channels", "image_size"))
    assert isinstance(C, int) and isinstance(S, int), (
        f"{name}: the config needs int options in_channels and image_size (the run reads "
        f"them for the image shape); got {C!r}, {S!r}"
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = spec.build(config)
    assert isinstance(model, torch.nn.Module), f"{name}: build returned {type(model)}"
    _check_signatures(spec, model)
    _checking("output shape, dtype and determinism")
    time_input = optional(model, Backbone, "time_input")
    assert time_input in ("timestep", "log_snr"), (
        f"{name}: time_input must be 'timestep' or 'log_snr': {time_input!r}"
    )
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, C, S, S, generator=g)
    if time_input == "log_snr":
        t = torch.linspace(6.0, -6.0, batch)
        t_other = t.flip(0) + 0.5
    else:
        t = torch.linspace(0.0, 99.0, batch).round()
        t_other = (t + 37.0) % 100.0

    def forward(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> Any:
        with torch.no_grad():
            return model(x, t) if cond is None else model(x, t, cond)

    model.eval()
    out = forward(x, t)
    assert isinstance(out, torch.Tensor), f"{name}: forward returned {type(out)}, not a tensor"
    assert out.shape == x.shape, (
        f"{name}: output shape {tuple(out.shape)} != input shape {tuple(x.shape)}"
    )
    assert out.dtype == x.dtype, f"{name}: output dtype {out.dtype} != input dtype {x.dtype}"
    assert bool(torch.isfinite(out).all()), f"{name}: output is not finite"
    assert torch.equal(forward(x, t), out), f"{name}: two evaluations in eval mode differ"

    # Gradients reach every parameter (an unused parameter breaks DDP and hides bugs).
    _checking("gradients reaching every parameter")
    model.train()
    model.zero_grad(set_to_none=True)
    model(x, t).square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"{name}: parameters get no gradient: {no_grad[:5]}"
    bad = [
        n for n, p in model.named_parameters() if p.grad is not None and not p.grad.isfinite().all()
    ]
    assert not bad, f"{name}: non-finite gradients in {bad[:5]}"
    model.zero_grad(set_to_none=True)

    # Perturbed parameters: the output must depend on x_t and t, image by image.
    _checking("dependence on x_t and t, image by image; class conditioning")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    model.eval()
    base = forward(x, t)
    single = forward(x[1:2], t[1:2])
    torch.testing.assert_close(
        single[0],
        base[1],
        rtol=1e-4,
        atol=1e-5,
        msg=lambda m: f"{name}: image 1 depends on the other images of the batch: {m}",
    )
    assert not torch.allclose(forward(x * 0.5 + 0.1, t), base), f"{name}: output ignores x_t"
    assert not torch.allclose(forward(x, t_other), base), f"{name}: output ignores t"
    num_classes = optional(model, Backbone, "num_classes")
    if num_classes:
        cond = torch.arange(batch) % num_classes
        with_cond = forward(x, t, cond)
        assert with_cond.shape == x.shape, f"{name}: bad output shape with class labels"
        assert not torch.allclose(with_cond, base), f"{name}: class labels are ignored"


@_conformance_check
def check_optimizer(spec: ComponentSpec, config: Any = None) -> None:
    """An optimizer built on a tiny model's parameters steps them and round-trips its state."""
    name = f"optimizer {spec.name!r}"
    config = default_config(spec) if config is None else config
    check_config_roundtrip(spec, config)

    def make() -> tuple[torch.nn.Module, Any]:
        model = torch.nn.Linear(4, 2)
        with torch.no_grad():
            model.weight.copy_(torch.linspace(-1, 1, 8).view(2, 4))
            model.bias.fill_(0.5)
        return model, spec.build(config, params=model.parameters(), device=torch.device("cpu"))

    model, opt = make()
    for attr in ("step", "zero_grad", "state_dict", "load_state_dict"):
        assert callable(getattr(opt, attr, None)), f"{name}: the optimizer has no {attr}()"
    _check_signatures(spec, opt)
    _checking("two steps moving the parameters")
    assert getattr(opt, "param_groups", None), f"{name}: the optimizer has no param_groups"
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.linspace(-1, 1, 12).view(3, 4)
    for _ in range(2):
        opt.zero_grad()
        model(x).square().sum().backward()
        opt.step()
    after = [p.detach() for p in model.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True)), (
        f"{name}: two steps left the parameters unchanged"
    )
    assert all(bool(torch.isfinite(a).all()) for a in after), f"{name}: non-finite parameters"
    # State round trip: a fresh optimizer with the state takes the same next step.
    _checking("its state_dict round trip")
    state = opt.state_dict()
    model2, opt2 = make()
    with torch.no_grad():
        for p2, p in zip(model2.parameters(), model.parameters(), strict=True):
            p2.copy_(p)
    opt2.load_state_dict(state)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).square().sum().backward()
        o.step()
    for p, p2 in zip(model.parameters(), model2.parameters(), strict=True):
        torch.testing.assert_close(
            p2, p, msg=lambda m: f"{name}: a reloaded state_dict steps differently: {m}"
        )


@_conformance_check
def check_lr_schedule(spec: ComponentSpec, config: Any = None, *, total_steps: int = 20) -> None:
    """An lr schedule gives finite, non-negative rates for ``total_steps`` and resumes exactly.

    Resuming is what a checkpoint does: a fresh optimizer and schedule load the state
    dicts of both, and the rates continue as if uninterrupted.
    """
    name = f"lr_schedule {spec.name!r}"
    config = default_config(spec) if config is None else config
    check_config_roundtrip(spec, config)

    def make() -> tuple[torch.optim.Optimizer, Any]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
        return opt, spec.build(config, optimizer=opt, total_steps=total_steps)

    opt, sched = make()
    for attr in ("step", "state_dict", "load_state_dict"):
        assert callable(getattr(sched, attr, None)), f"{name}: the lr schedule has no {attr}()"
    _check_signatures(spec, sched)
    _checking("finite, non-negative rates; exact resume from the state dicts")
    lrs = []
    half = total_steps // 2
    state = None
    for i in range(total_steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        if i + 1 == half:  # what a checkpoint holds: the optimizer's and the schedule's state
            state = (opt.state_dict(), sched.state_dict())
    assert all(math.isfinite(lr) and lr >= 0 for lr in lrs), f"{name}: bad rates {lrs}"
    opt2, sched2 = make()
    opt2.load_state_dict(state[0])
    sched2.load_state_dict(state[1])
    resumed = []
    for _ in range(half, total_steps):
        resumed.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert resumed == lrs[half:], (
        f"{name}: after load_state_dict the rates are {resumed}, expected {lrs[half:]}"
    )


@_conformance_check
def check_hook(spec: ComponentSpec, config: Any = None) -> None:
    """A hook component registers into a run's plugin manager and implements known hooks.

    (To see it work inside a run, train a tiny recipe with it: the ``denoisekit.testing``
    pytest plugin's conformance class does.)
    """
    import pluggy

    from denoisekit import hookspecs

    name = f"hook {spec.name!r}"
    config = default_config(spec) if config is None else config
    check_config_roundtrip(spec, config)
    hook = spec.build(config)
    _checking("registering into a run's plugin manager")
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    try:
        pm.register(hook, name=f"hook:{spec.name}")
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise AssertionError(f"{name}: {exc}") from exc
    assert pm.get_hookcallers(hook), f"{name}: implements no hook (use @denoisekit.hookimpl)"


@_conformance_check
def check_autoencoder(spec: ComponentSpec, config: Any = None, *, batch: int = 3) -> None:
    """An autoencoder maps images to a :class:`~denoisekit.DiagonalGaussian` over latents of
    its ``latent_shape`` and latents back to images, with ``shift``/``scale`` in its state.

    On ``(batch, in_channels, S, S)`` images (``S``: the first of 8, 16, 32, 64 that
    ``latent_shape`` takes; the config needs ``in_channels``) asserts: the posterior's mean
    and log-variance have ``latent_shape`` and the input's dtype, in float32 and float64,
    and are finite; ``decode`` gives the input's shape and dtype; evaluation is
    deterministic and image ``i`` does not depend on the rest of the batch; the KL is one
    value per image; every parameter gets a finite gradient from a reconstruction + KL
    loss; ``shift``/``scale`` are ``(latent_channels,)`` state-dict entries that a fresh
    instance loads back (with the same outputs).
    """
    from denoisekit.autoencoder import DiagonalGaussian

    name = f"autoencoder {spec.name!r}"
    config = default_config(spec) if config is None else config
    check_config_roundtrip(spec, config)
    C = getattr(config, "in_channels", None)
    assert isinstance(C, int), f"{name}: the config needs an int option in_channels"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, fresh = spec.build(config), spec.build(config)
    assert isinstance(model, torch.nn.Module), f"{name}: build returned {type(model)}"
    _check_signatures(spec, model)
    _checking("latent_shape; encode and decode shapes and dtypes (float32, float64)")
    sizes = []
    for S in (8, 16, 32, 64):
        with contextlib.suppress(ValueError):
            sizes.append((S, tuple(model.latent_shape((C, S, S)))))
    assert sizes, f"{name}: latent_shape refuses {C}×S×S images for S in 8, 16, 32, 64"
    S, latent = sizes[0]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, C, S, S, generator=g) * 2 - 1
    model.eval()
    for dtype in (torch.float32, torch.float64):
        model.to(dtype)
        with torch.no_grad():
            dist = model.encode(x.to(dtype))
            assert isinstance(dist, DiagonalGaussian), f"{name}: encode gave {type(dist)}"
            out = model.decode(dist.mode())
        for what, t in (("mean", dist.mean), ("logvar", dist.logvar)):
            assert tuple(t.shape) == (batch, *latent), (
                f"{name}: posterior {what} {tuple(t.shape)}; latent_shape says {latent}"
            )
            assert t.dtype == dtype, f"{name}: posterior {what} is {t.dtype} for {dtype} images"
            assert bool(torch.isfinite(t).all()), f"{name}: posterior {what} is not finite"
        assert out.shape == x.shape and out.dtype == dtype, (
            f"{name}: decode gave {tuple(out.shape)} {out.dtype} for {tuple(x.shape)} {dtype}"
        )
        assert tuple(dist.kl().shape) == (batch,), f"{name}: kl() is not one value per image"
    _checking("determinism and batch independence")
    model.float()
    with torch.no_grad():
        mean = model.encode(x).mean
        assert torch.equal(model.encode(x).mean, mean), f"{name}: two encodings differ"
        torch.testing.assert_close(
            model.encode(x[1:2]).mean[0], mean[1], rtol=1e-4, atol=1e-5,
            msg=lambda m: f"{name}: image 1 depends on the other images of the batch: {m}",
        )  # fmt: skip
    _checking("gradients reaching every parameter")
    model.train()
    dist = model.encode(x)
    loss = (model.decode(dist.sample(g)) - x).abs().mean() + dist.kl().mean()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"{name}: parameters get no gradient: {no_grad[:5]}"
    bad = [
        n for n, p in model.named_parameters() if p.grad is not None and not p.grad.isfinite().all()
    ]
    assert not bad, f"{name}: non-finite gradients in {bad[:5]}"
    _checking("shift and scale in the state dict")
    model.eval()
    with torch.no_grad():
        model.shift.copy_(torch.linspace(-0.5, 0.5, latent[0]))
        model.scale.copy_(torch.linspace(0.5, 2.0, latent[0]))
    state = model.state_dict()
    for buffer in ("shift", "scale"):
        assert buffer in state and tuple(state[buffer].shape) == latent[:1], (
            f"{name}: {buffer} must be a ({latent[0]},) buffer in the state dict"
        )
    fresh.load_state_dict(state)
    fresh.eval()
    assert torch.equal(fresh.shift, model.shift) and torch.equal(fresh.scale, model.scale), (
        f"{name}: shift/scale do not load back"
    )
    with torch.no_grad():
        assert torch.equal(fresh.encode(x).mean, model.encode(x).mean), (
            f"{name}: a reloaded state dict encodes differently"
        )


#: The behavioural check of each kind that has one: ``check_<kind>`` (every ``Kind.runs``
#: kind, and the autoencoder); data and metric components get the config round trip only.
CHECKS: dict[str, Any] = {
    k.name: globals()[f"check_{k.name}"] for k in KIND_RECORDS if f"check_{k.name}" in globals()
}


def check_component(spec: ComponentSpec, config: Any = None) -> None:
    """Run the check of the spec's kind (:data:`CHECKS`), or the config round trip alone."""
    check = CHECKS.get(spec.kind)
    if check is None:
        check_config_roundtrip(spec, config)
    else:
        check(spec, config)
