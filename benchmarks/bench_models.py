"""The models, variants and workloads that ``benchmarks/bench.py`` times.

Two implementations of one network, built to the same layout:

* ``denoisekit``: the ``unet`` backbone, with the ``linear`` schedule, the ``mse`` loss,
  the ``adamw`` optimizer and the ``ema`` hook, all built through the registry exactly as
  a run builds them;
* ``diffusers`` (optional, the ``bench`` extra): ``UNet2DModel`` with ``DDPMScheduler``,
  ``torch.optim.AdamW`` and ``diffusers.training_utils.EMAModel``, as diffusers'
  ``train_unconditional.py`` example trains it.

A *variant* is a combination of precision (fp32 / bf16 / fp16 autocast), memory format,
``torch.compile`` and AdamW kernel, applied the same way to both.
"""

from __future__ import annotations

import time
import types
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

#: The DDPM CIFAR-10 layout (Ho et al. 2020) at 32 base channels: widths 32-64-64-64, two
#: residual blocks per level, one-head self-attention at 16×16 and in the middle, dropout
#: 0.1, 32×32 RGB images.
LAYOUT: dict[str, Any] = {
    "in_channels": 3,
    "image_size": 32,
    "channels": 32,
    "channel_mults": (1, 2, 2, 2),
    "num_res_blocks": 2,
    "attention_resolutions": (16,),
    "num_heads": 1,
    "groups": 32,
    "dropout": 0.1,
}
#: A tiny layout of the same shape for ``--quick`` (CI smoke test) and the tests.
QUICK_LAYOUT: dict[str, Any] = {
    "in_channels": 3,
    "image_size": 16,
    "channels": 8,
    "channel_mults": (1, 2),
    "num_res_blocks": 1,
    "attention_resolutions": (8,),
    "num_heads": 1,
    "groups": 4,
    "dropout": 0.1,
}
NUM_TIMESTEPS = 1000
MODELS: tuple[str, ...] = ("denoisekit", "diffusers")


def diffusers_available() -> bool:
    """Whether the optional ``diffusers`` package imports."""
    try:
        import diffusers  # noqa: F401
    except Exception:  # ImportError, or a broken install: treated alike
        return False
    return True


# --------------------------------------------------------------------------- variants


@attrs.frozen
class Variant:
    """How a model is run: precision, memory format, compile and the AdamW kernel."""

    name: str
    dtype: str = "fp32"  # autocast dtype: fp32 (no autocast), bf16, fp16
    channels_last: bool = False
    compile: bool = False
    regional: bool = False  # with compile: each repeated block, not the whole model
    adamw: str = "fused"  # fused or foreach
    summary: str = ""

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.dtype]


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("eager", summary="eager fp32, NCHW, fused AdamW (the baseline)"),
        Variant("foreach", adamw="foreach", summary="eager fp32, foreach AdamW"),
        Variant("channels_last", channels_last=True, summary="eager fp32, channels-last"),
        Variant("bf16", dtype="bf16", summary="bf16 autocast"),
        Variant(
            "bf16_cl", dtype="bf16", channels_last=True, summary="bf16 autocast, channels-last"
        ),
        Variant("fp16", dtype="fp16", summary="fp16 autocast + GradScaler (GPU)"),
        Variant("compile", compile=True, summary="torch.compile, fp32"),
        Variant("compile_cl", compile=True, channels_last=True, summary="compile, channels-last"),
        Variant("compile_bf16", dtype="bf16", compile=True, summary="compile + bf16 autocast"),
        Variant(
            "regional",
            compile=True,
            regional=True,
            summary="torch.compile of each residual and attention block (regional), fp32",
        ),
        Variant(
            "regional_bf16",
            dtype="bf16",
            compile=True,
            regional=True,
            summary="regional compile + bf16 autocast",
        ),
    )
}
#: Variants with no optimizer in them are the same for sampling: these are timed there.
SAMPLING_VARIANTS: tuple[str, ...] = tuple(n for n, v in VARIANTS.items() if v.adamw == "fused")


def autocast(device: torch.device, variant: Variant) -> Any:
    """The autocast context of a variant (a null context in fp32)."""
    dtype = variant.autocast_dtype
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _memory_format(variant: Variant) -> torch.memory_format:
    return torch.channels_last if variant.channels_last else torch.contiguous_format


# --------------------------------------------------------------------------- models


def _registry() -> Any:
    from denoisekit.host.registry import load_registry

    return load_registry()


def build_denoisekit(layout: dict[str, Any], seed: int = 0) -> nn.Module:
    """denoisekit's ``unet`` backbone in ``layout``, built through the registry."""
    from denoisekit.plugins.backbones.unet import UNetConfig

    torch.manual_seed(seed)
    return _registry().build("backbone", "unet", UNetConfig(**layout))


def diffusers_kwargs(layout: dict[str, Any]) -> dict[str, Any]:
    """``UNet2DModel`` keyword arguments for the same network as ``layout``.

    DDPM's sinusoidal embedding is ``[sin, cos]`` with frequencies
    ``exp(-log(10000) i / (half - 1))``: diffusers' ``flip_sin_to_cos=False, freq_shift=1``.
    Attention levels use ``AttnDownBlock2D`` / ``AttnUpBlock2D``; ``attention_head_dim``
    is the width per head (``None``: one head).
    """
    mults = layout["channel_mults"]
    ch = layout["channels"]
    size = layout["image_size"]
    res = [size // 2**i for i in range(len(mults))]
    attn = [r in layout["attention_resolutions"] for r in res]
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn))
    heads = layout.get("num_heads", 1)
    width = ch * mults[attn.index(True)] if any(attn) else ch * mults[-1]
    return {
        "sample_size": size,
        "in_channels": layout["in_channels"],
        "out_channels": layout["in_channels"],
        "block_out_channels": tuple(ch * m for m in mults),
        "layers_per_block": layout["num_res_blocks"],
        "down_block_types": down,
        "up_block_types": up,
        "attention_head_dim": None if heads == 1 else width // heads,
        "norm_num_groups": layout["groups"],
        "dropout": layout["dropout"],
        "freq_shift": 1,
        "flip_sin_to_cos": False,
    }


def build_diffusers(layout: dict[str, Any], seed: int = 0) -> nn.Module:
    """diffusers' ``UNet2DModel`` configured to ``layout`` (needs the ``bench`` extra)."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(**diffusers_kwargs(layout))


def build_model(kind: str, layout: dict[str, Any], seed: int = 0) -> nn.Module:
    """``build_denoisekit`` or ``build_diffusers``."""
    if kind == "denoisekit":
        return build_denoisekit(layout, seed)
    if kind == "diffusers":
        return build_diffusers(layout, seed)
    raise ValueError(f"unknown model {kind!r}; the models are {', '.join(MODELS)}")


def forward_fn(kind: str) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``f(model, x_t, t) -> prediction`` for either implementation."""
    if kind == "diffusers":
        return lambda model, x, t: model(x, t).sample
    return lambda model, x, t: model(x, t)


def perturb_(model: nn.Module, seed: int = 0, scale: float = 0.05) -> nn.Module:
    """Give every zero-initialised weight random values, so outputs are not trivially 0.

    Both U-Nets zero-initialise their output conv and the last conv of each block, so a
    fresh model predicts exactly 0 and any two variants would "agree".
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(scale * torch.randn(p.shape, generator=g))
    return model


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameter values."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _apply_variant(
    model: nn.Module, variant: Variant, device: torch.device, compile_kwargs: dict[str, Any]
) -> tuple[nn.Module, nn.Module]:
    """``(raw, callable)``: the model moved / converted, and what the step calls."""
    model = model.to(device=device, memory_format=_memory_format(variant))
    if variant.regional:
        # One block class meets many shapes (widths, resolutions): one graph each. Dynamo's
        # default of 8 graphs per code object would send the rest to eager, silently.
        blocks = repeated_blocks(model)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        for block in blocks:
            block.compile(dynamic=False, **compile_kwargs)
        return model, model
    call = torch.compile(model, **compile_kwargs) if variant.compile else model
    return model, call


#: The blocks regional compilation compiles: denoisekit's residual and attention blocks,
#: and their diffusers counterparts (what ``compile_repeated_blocks`` would name, had
#: ``UNet2DModel`` declared ``_repeated_blocks``).
REPEATED_BLOCKS: tuple[str, ...] = ("ResBlock", "AttentionBlock", "ResnetBlock2D", "Attention")


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` that regional compilation compiles, one by one."""
    return [m for m in model.modules() if type(m).__name__ in REPEATED_BLOCKS]


def data_batch(
    layout: dict[str, Any], batch: int, device: torch.device, seed: int = 0
) -> torch.Tensor:
    """A fixed batch of "images" uniform in [-1, 1] (no data set is downloaded)."""
    g = torch.Generator().manual_seed(seed)
    c, s = layout["in_channels"], layout["image_size"]
    return (torch.rand(batch, c, s, s, generator=g) * 2 - 1).to(device)


# --------------------------------------------------------------------------- training step


@attrs.define
class TrainStep:
    """One optimization step, callable; ``model`` is the raw module it trains."""

    step: Callable[[], torch.Tensor]
    model: nn.Module
    call: nn.Module

    def __call__(self) -> torch.Tensor:
        return self.step()


def make_train_step(
    kind: str,
    variant: Variant,
    layout: dict[str, Any],
    *,
    batch: int,
    device: torch.device,
    seed: int = 0,
    compile_kwargs: dict[str, Any] | None = None,
) -> TrainStep:
    """A training step: noise a batch, forward, loss, backward, AdamW step, EMA update.

    Each implementation uses its own framework's pieces (see the module docstring); the
    batch of clean images is fixed (data loading is not part of the step: the ``train()``
    loop row of the benchmark measures it).
    """
    model = build_model(kind, layout, seed)
    model, call = _apply_variant(model, variant, device, compile_kwargs or {})
    model.train()
    fmt = _memory_format(variant)
    x0 = data_batch(layout, batch, device, seed).contiguous(memory_format=fmt)
    g = torch.Generator(device=device).manual_seed(seed)
    use_scaler = variant.dtype == "fp16"
    scaler = torch.amp.GradScaler(device.type) if use_scaler else None

    def backward_and_step(loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    if kind == "denoisekit":
        from denoisekit.diffusion import q_sample
        from denoisekit.plugins.hooks.ema import EMAConfig
        from denoisekit.plugins.losses.mse import MSELossConfig
        from denoisekit.plugins.optim.adam import AdamWConfig
        from denoisekit.plugins.schedules.linear import LinearScheduleConfig

        registry = _registry()
        schedule = registry.build(
            "schedule", "linear", LinearScheduleConfig(num_timesteps=NUM_TIMESTEPS)
        )
        loss_fn = registry.build("loss", "mse", MSELossConfig(), schedule=schedule)
        opt = registry.build(
            "optimizer",
            "adamw",
            AdamWConfig(lr=1e-4, implementation=variant.adamw),
            params=model.parameters(),
            device=device,
        )
        ema = registry.build("hook", "ema", EMAConfig(decay=0.9999))
        ema.denoisekit_configure(run=types.SimpleNamespace(model=model))
        counter = [0]

        def step() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            # Notation: x0 clean images, t ~ U{0..T-1}, eps ~ N(0, I), x_t = q_sample(x0, t, eps).
            t = torch.randint(0, NUM_TIMESTEPS, (batch,), device=device, generator=g)
            noise = torch.randn(x0.shape, device=device, generator=g)
            x_t = q_sample(schedule, x0, t, noise).contiguous(memory_format=fmt)
            with autocast(device, variant):
                out = call(x_t, t.float())
            loss = loss_fn(out.float(), x0=x0, noise=noise, t=t).mean()
            backward_and_step(loss, opt)
            counter[0] += 1
            ema.denoisekit_train_step_end(run=None, step=counter[0])
            return loss.detach()

    elif kind == "diffusers":
        from diffusers import DDPMScheduler
        from diffusers.training_utils import EMAModel

        scheduler = DDPMScheduler(num_train_timesteps=NUM_TIMESTEPS, beta_schedule="linear")
        flags = {"fused": True} if variant.adamw == "fused" else {"foreach": True}
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, **flags)
        ema = EMAModel(model.parameters(), decay=0.9999, foreach=True)

        def step() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            noise = torch.randn(x0.shape, device=device, generator=g)
            t = torch.randint(0, NUM_TIMESTEPS, (batch,), device=device, generator=g)
            x_t = scheduler.add_noise(x0, noise, t).contiguous(memory_format=fmt)
            with autocast(device, variant):
                out = call(x_t, t).sample
            loss = F.mse_loss(out.float(), noise)
            backward_and_step(loss, opt)
            ema.step(model.parameters())
            return loss.detach()

    else:
        raise ValueError(f"unknown model {kind!r}")
    return TrainStep(step=step, model=model, call=call)


def train_flops_per_image(kind: str, layout: dict[str, Any], *, batch: int = 2) -> float:
    """FLOPs of one forward + backward per image (torch's FLOP counter)."""
    from bench_measure import count_flops

    model = build_model(kind, layout)
    fwd = forward_fn(kind)
    x = data_batch(layout, batch, torch.device("cpu"))
    t = torch.full((batch,), 500.0)

    def fwd_bwd() -> None:
        fwd(model, x, t).square().mean().backward()

    return count_flops(fwd_bwd) / batch


def forward_flops_per_image(kind: str, layout: dict[str, Any]) -> float:
    """FLOPs of one forward pass of one image."""
    from bench_measure import count_flops

    model = build_model(kind, layout).eval()
    fwd = forward_fn(kind)
    x = data_batch(layout, 1, torch.device("cpu"))
    with torch.no_grad():
        return float(count_flops(lambda: fwd(model, x, torch.full((1,), 500.0))))


# --------------------------------------------------------------------------- sampling


def make_forward(
    kind: str,
    variant: Variant,
    layout: dict[str, Any],
    *,
    batch: int,
    device: torch.device,
    seed: int = 0,
    compile_kwargs: dict[str, Any] | None = None,
    perturb: bool = False,
) -> tuple[Callable[[], torch.Tensor], nn.Module]:
    """``(f, raw_model)``: ``f()`` is one network evaluation for sampling (eval, no grad)."""
    model = build_model(kind, layout, seed)
    if perturb:
        perturb_(model, seed)
    model, call = _apply_variant(model.eval(), variant, device, compile_kwargs or {})
    fmt = _memory_format(variant)
    x = data_batch(layout, batch, device, seed + 1).contiguous(memory_format=fmt)
    t = torch.linspace(0, NUM_TIMESTEPS - 1, batch, device=device).round()
    if kind == "diffusers":
        t = t.long()
    fwd = forward_fn(kind)

    @torch.no_grad()
    def f() -> torch.Tensor:
        with autocast(device, variant):
            return fwd(call, x, t)

    return f, model


class TimedModule(nn.Module):
    """Wraps a network and adds up the seconds spent in its forward calls.

    Used to split a sampler loop's time into the network's and the sampler's own.
    """

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.module = module
        self.device = device
        self.seconds = 0.0
        self.calls = 0
        self.time_input = getattr(module, "time_input", "timestep")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        from bench_measure import synchronize

        start = time.perf_counter()
        out = self.module(*args, **kwargs)
        synchronize(self.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def make_sampler_loop(
    kind: str,
    layout: dict[str, Any],
    *,
    steps: int,
    batch: int,
    device: torch.device,
    seed: int = 0,
    clip: bool = True,
) -> tuple[Callable[[], torch.Tensor], TimedModule]:
    """``(loop, timed)``: one full DDIM sampling loop, and the timed network inside it.

    denoisekit: the ``ddim`` sampler over a ``Denoiser``; diffusers: ``DDIMScheduler``
    stepped by hand, as its ``DDIMPipeline`` does. Both deterministic (eta = 0), "leading"
    spacing, on the ``linear`` schedule, from the same x_T, with x0 clipped to [-1, 1]
    when ``clip`` (denoisekit then recomputes eps from the clipped x0, as
    improved-diffusion does; diffusers keeps the network's eps, so clipped runs differ).
    """
    model = build_model(kind, layout, seed).eval().to(device)
    timed = TimedModule(model, device)
    c, s = layout["in_channels"], layout["image_size"]
    shape = (batch, c, s, s)

    if kind == "denoisekit":
        from denoisekit.denoiser import Denoiser
        from denoisekit.plugins.samplers.ddim import DDIMConfig
        from denoisekit.plugins.schedules.linear import LinearScheduleConfig

        registry = _registry()
        schedule = registry.build(
            "schedule", "linear", LinearScheduleConfig(num_timesteps=NUM_TIMESTEPS)
        )
        sampler = registry.build("sampler", "ddim", DDIMConfig(steps=steps, clip_denoised=clip))
        denoiser = Denoiser(timed, schedule, "eps")

        def loop() -> torch.Tensor:
            g = torch.Generator(device=device).manual_seed(seed)
            x_T = torch.randn(shape, generator=g, device=device)
            return sampler.sample(denoiser, x_T, generator=g)

    else:
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler(
            num_train_timesteps=NUM_TIMESTEPS, beta_schedule="linear", clip_sample=clip
        )

        @torch.no_grad()
        def loop() -> torch.Tensor:
            g = torch.Generator(device=device).manual_seed(seed)
            x = torch.randn(shape, generator=g, device=device)
            scheduler.set_timesteps(steps, device=device)
            for t in scheduler.timesteps:
                eps = timed(x, t).sample
                x = scheduler.step(eps, t, x, eta=0.0).prev_sample
            return x

    return loop, timed


# --------------------------------------------------------------------------- correctness


def tolerance(variant: Variant) -> float:
    """Allowed relative L2 error of a variant's output against eager fp32.

    bf16 keeps 8 bits of mantissa (relative rounding 2^-8 ≈ 0.4% per op; errors of a
    few dozen layers add up to about 1%); fp16 has 11 bits. fp32 variants (compile,
    channels-last) only reorder float32 sums.
    """
    return {"fp32": 1e-4, "bf16": 3e-2, "fp16": 1e-2}[variant.dtype]


def check_variant(
    kind: str,
    variant: Variant,
    layout: dict[str, Any],
    *,
    batch: int = 2,
    device: torch.device | None = None,
    compile_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Compare a variant's forward output with eager fp32 on the same (perturbed) weights.

    Returns ``{"model", "variant", "rel_err", "max_abs_err", "tolerance", "ok"}``, the
    relative error being ``||y - y_ref|| / ||y_ref||``.
    """
    device = device or torch.device("cpu")
    ref_fn, _ = make_forward(
        kind, VARIANTS["eager"], layout, batch=batch, device=device, perturb=True
    )
    fn, _ = make_forward(
        kind, variant, layout, batch=batch, device=device, perturb=True,
        compile_kwargs=compile_kwargs,
    )  # fmt: skip
    return compare_outputs(kind, variant, fn().float(), ref_fn().float())


def compare_outputs(
    kind: str, variant: Variant, out: torch.Tensor, ref: torch.Tensor
) -> dict[str, Any]:
    """``out`` against the eager fp32 ``ref``: ``{"model", "variant", "rel_err",
    "max_abs_err", "tolerance", "ok"}`` with ``rel_err = ||out - ref|| / ||ref||``."""
    rel = float((out - ref).norm() / ref.norm().clamp_min(1e-30))
    tol = tolerance(variant)
    return {
        "model": kind,
        "variant": variant.name,
        "rel_err": rel,
        "max_abs_err": float((out - ref).abs().max()),
        "tolerance": tol,
        "ok": bool(rel <= tol and torch.isfinite(out).all()),
    }


# --------------------------------------------------------------------------- the real loop


def _toml_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def train_loop_recipe(
    layout: dict[str, Any], *, batch: int, steps: int, device: torch.device, variant: Variant
) -> dict[str, Any]:
    """Recipe data for a denoisekit run of this layout and variant (the bench's ``train()``)."""
    if variant.channels_last:
        raise ValueError("a recipe has no channels-last switch; time that variant with the step")
    hooks: dict[str, Any] = {"ema": {"decay": 0.9999}}
    if variant.dtype != "fp32":
        hooks["amp"] = {"dtype": {"bf16": "bfloat16", "fp16": "float16"}[variant.dtype]}
    if variant.compile:
        hooks["compile"] = {}
    return {
        "name": "bench",
        "seed": 0,
        "data": {"type": "digits"},  # unused: the bench feeds its own tensors
        "backbone": {"type": "unet", **{k: _toml_value(v) for k, v in layout.items()}},
        "schedule": {"type": "linear", "num_timesteps": NUM_TIMESTEPS},
        "loss": {"type": "mse"},
        "optimizer": {"type": "adamw", "lr": 1e-4, "implementation": variant.adamw},
        "lr_schedule": {"type": "constant"},
        "sampler": {"type": "ddim", "steps": 10},
        "train": {
            "steps": steps,
            "batch_size": batch,
            "log_every": max(1, steps // 2),
            "device": str(device),
        },
        "hooks": hooks,
    }


def time_train_loop(
    layout: dict[str, Any],
    *,
    batch: int,
    steps: int,
    device: torch.device,
    variant: Variant,
    out_dir: str,
) -> list[float]:
    """Seconds of each step of denoisekit's own ``train()`` loop (data loader, hooks, logging).

    The run is built from recipe data through the registry, as ``denoisekit train`` builds
    it, but fed an in-memory data set of random images (``num_workers = 0``).
    """
    from denoisekit import hookimpl
    from denoisekit.engine.batches import BatchStream
    from denoisekit.engine.build import build_run
    from denoisekit.engine.loop import train
    from denoisekit.host.recipe import recipe_from_data

    class StepClock:
        def __init__(self) -> None:
            self.stamps: list[float] = []

        @hookimpl
        def denoisekit_train_start(self) -> None:
            self.stamps.append(time.perf_counter())

        @hookimpl
        def denoisekit_train_step_end(self) -> None:  # after EMA's tryfirst update
            from bench_measure import synchronize

            synchronize(device)
            self.stamps.append(time.perf_counter())

    registry = _registry()
    # check=False: the data table is a placeholder (the run is fed the bench's own
    # images), so the data-vs-backbone check of a real recipe does not apply.
    recipe = recipe_from_data(
        train_loop_recipe(layout, batch=batch, steps=steps, device=device, variant=variant),
        registry,
        check=False,
    )
    clock = StepClock()
    run = build_run(
        recipe, out_dir=out_dir, registry=registry, extra_hooks=[clock], with_data=False
    )
    images = data_batch(layout, 4 * batch, torch.device("cpu"))
    dataset = torch.utils.data.TensorDataset(images, torch.full((4 * batch,), -1))
    # The run record is frozen: a copy of it that holds the bench's batches.
    run = attrs.evolve(
        run, batches=BatchStream(dataset, batch_size=batch, seed=0, device=run.device)
    )
    train(run)
    return [b - a for a, b in zip(clock.stamps, clock.stamps[1:], strict=False)]
