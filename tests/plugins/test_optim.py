"""Optimizer plugins (adam, adamw, sgd): options, kernels, updates against the papers' rules."""

from __future__ import annotations

import math

import attrs
import pytest
import torch

from denoisekit.errors import RecipeError
from denoisekit.plugins.optim import adam as adam_mod
from denoisekit.plugins.optim import sgd as sgd_mod
from denoisekit.plugins.optim.adam import AdamConfig, AdamWConfig, build_adam, build_adamw
from denoisekit.plugins.optim.sgd import SGDConfig, build_sgd

BUILDERS = {
    "adam": (AdamConfig, build_adam, torch.optim.Adam),
    "adamw": (AdamWConfig, build_adamw, torch.optim.AdamW),
    "sgd": (SGDConfig, build_sgd, torch.optim.SGD),
}
KERNELS = ("fused", "foreach", "for-loop")


def test_registration() -> None:
    specs = adam_mod.denoisekit_components() + sgd_mod.denoisekit_components()
    assert {(s.kind, s.name) for s in specs} == {
        ("optimizer", "adam"),
        ("optimizer", "adamw"),
        ("optimizer", "sgd"),
    }
    assert all(s.summary for s in specs)


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("cls", [AdamConfig, AdamWConfig, SGDConfig])
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lr", 0.0),
        ("lr", -1e-3),
        ("lr", math.nan),
        ("lr", math.inf),
        ("weight_decay", -0.1),
        ("weight_decay", math.inf),
        ("implementation", "cuda-graph"),
    ],
)
def test_common_options_rejected(cls: type, field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"'{field}'"):
        cls(**{field: value})


@pytest.mark.parametrize("cls", [AdamConfig, AdamWConfig])
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"betas": (1.0, 0.999)}, "betas[0]"),
        ({"betas": (0.9, 1.0)}, "betas[1]"),
        ({"betas": (-0.1, 0.999)}, "betas[0]"),
        ({"betas": (0.9,)}, "betas"),
        ({"eps": 0.0}, "eps"),
        ({"eps": -1e-8}, "eps"),
    ],
)
def test_adam_options_rejected(cls: type, kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"'{field}'".replace("[", r"\[").replace("]", r"\]")):
        cls(**kwargs)


def test_sgd_options_rejected() -> None:
    with pytest.raises(ValueError, match="'momentum'"):
        SGDConfig(momentum=1.0)
    with pytest.raises(ValueError, match="'momentum'"):
        SGDConfig(momentum=-0.5)
    with pytest.raises(ValueError, match=r"'nesterov'.*'momentum'"):
        SGDConfig(nesterov=True)
    SGDConfig(momentum=0.9, nesterov=True)  # valid


def test_defaults() -> None:
    assert AdamWConfig().lr == 2e-4
    assert AdamWConfig().betas == (0.9, 0.999)
    assert AdamWConfig().weight_decay == 0.0
    assert AdamConfig().implementation == "auto"
    assert AdamConfig(betas=[0.5, 0.9]).betas == (0.5, 0.9)  # TOML arrays arrive as lists


# --------------------------------------------------------------------------- build


@pytest.mark.parametrize("name", list(BUILDERS))
def test_build_passes_options(name: str) -> None:
    cls, build, torch_cls = BUILDERS[name]
    model = torch.nn.Linear(3, 2)
    extra = {"betas": (0.8, 0.99), "eps": 1e-6} if name != "sgd" else {"momentum": 0.5}
    opt = build(cls(lr=0.05, weight_decay=0.01, **extra), params=model.parameters(), device="cpu")
    assert type(opt) is torch_cls
    (group,) = opt.param_groups
    assert group["lr"] == 0.05
    assert group["weight_decay"] == 0.01
    for key, value in extra.items():
        assert group[key] == value
    assert len(group["params"]) == 2  # a generator of parameters is consumed once, fully


@pytest.mark.parametrize("name", list(BUILDERS))
def test_param_groups_pass_through(name: str) -> None:
    cls, build, _ = BUILDERS[name]
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    groups = [{"params": [a], "weight_decay": 0.0}, {"params": [b], "lr": 0.5, "tag": "head"}]
    opt = build(cls(lr=0.1, weight_decay=0.2), params=groups, device="cpu")
    g0, g1 = opt.param_groups
    assert (g0["lr"], g0["weight_decay"]) == (0.1, 0.0)
    assert (g1["lr"], g1["weight_decay"], g1["tag"]) == (0.5, 0.2, "head")


@pytest.mark.parametrize("name", list(BUILDERS))
def test_auto_is_fused_on_cpu(name: str) -> None:
    cls, build, _ = BUILDERS[name]
    opt = build(cls(), params=[torch.nn.Parameter(torch.ones(2))], device="cpu")
    assert opt.defaults["fused"] is True
    assert not opt.defaults["foreach"]


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize(
    ("implementation", "fused", "foreach"),
    [("fused", True, False), ("foreach", False, True), ("for-loop", False, False)],
)
def test_explicit_kernel_flags(name: str, implementation: str, fused: bool, foreach: bool) -> None:
    cls, build, _ = BUILDERS[name]
    params = [torch.nn.Parameter(torch.ones(2))]
    opt = build(cls(implementation=implementation), params=params, device="cpu")
    assert opt.defaults["fused"] is fused
    assert opt.defaults["foreach"] is foreach


def test_auto_defers_to_torch_elsewhere() -> None:
    # On a device where fusing is not chosen by "auto", torch's own default decides.
    params = [torch.nn.Parameter(torch.ones(2))]
    assert adam_mod.kernel_flags("auto", params, "meta", component="adam") == {
        "fused": None,
        "foreach": None,
    }
    # Without a run device, the parameters' device decides.
    assert adam_mod.kernel_flags("auto", params, None, component="adam")["fused"] is True


@pytest.mark.parametrize("name", list(BUILDERS))
def test_fused_on_unsupported_device_is_a_clear_error(name: str) -> None:
    cls, build, _ = BUILDERS[name]
    params = [torch.nn.Parameter(torch.ones(2))]
    with pytest.raises(RecipeError, match=r"fused.*meta.*optimizer\.implementation") as info:
        build(cls(implementation="fused"), params=params, device="meta")
    assert "\n" not in str(info.value)


def test_fused_on_integer_tensors_is_a_clear_error() -> None:
    with pytest.raises(RecipeError, match="non-floating-point"):
        build_adam(AdamConfig(implementation="fused"), params=[torch.ones(2, dtype=torch.int64)])


# --------------------------------------------------------------------------- updates


def _reference_adam(p0, grads, *, lr, beta1, beta2, eps, wd, decoupled):
    """Algorithm 1 of Kingma & Ba (2015); L2 (Adam) or decoupled (AdamW, Loshchilov & Hutter
    2019, Algorithm 2) weight decay. Written out independently in float64."""
    p = p0.clone().double()
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g.double()
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        p = p - lr * m_hat / (v_hat.sqrt() + eps)
    return p


def _reference_sgd(p0, grads, *, lr, momentum, nesterov, wd):
    """SGD with momentum as torch documents it (buffer starts at the first gradient)."""
    p = p0.clone().double()
    buf = None
    for g in grads:
        g = g.double() + wd * p
        if momentum:
            buf = g.clone() if buf is None else momentum * buf + g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p


def _run(build, config, p0, grads):
    p = torch.nn.Parameter(p0.clone())
    opt = build(config, params=[p], device="cpu")
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


def _grads(generator: torch.Generator, n: int = 5) -> list[torch.Tensor]:
    return [torch.randn(4, 3, generator=generator) for _ in range(n)]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_update_matches_algorithm(name: str, kernel: str, generator: torch.Generator) -> None:
    cls, build, _ = BUILDERS[name]
    p0 = torch.randn(4, 3, generator=generator)
    grads = _grads(generator)
    config = cls(lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1, implementation=kernel)
    got = _run(build, config, p0, grads)
    want = _reference_adam(
        p0, grads, lr=1e-2, beta1=0.8, beta2=0.95, eps=1e-6, wd=0.1, decoupled=name == "adamw"
    )
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_adam_first_step_is_sign_like(generator: torch.Generator) -> None:
    # After one step with bias correction m_hat = g and v_hat = g^2, so the step is
    # lr * g / (|g| + eps): about lr in magnitude whatever the gradient's scale.
    p0 = torch.zeros(6)
    g = torch.tensor([1e-3, -2.0, 5.0, -7e2, 0.3, -0.01])
    got = _run(build_adam, AdamConfig(lr=0.1, eps=1e-12), p0, [g])
    torch.testing.assert_close(got, -0.1 * torch.sign(g), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_update_matches_rule(kernel: str, nesterov: bool, generator: torch.Generator) -> None:
    p0 = torch.randn(4, 3, generator=generator)
    grads = _grads(generator)
    config = SGDConfig(
        lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=0.01, implementation=kernel
    )
    got = _run(build_sgd, config, p0, grads)
    want = _reference_sgd(p0, grads, lr=0.05, momentum=0.9, nesterov=nesterov, wd=0.01)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_kernels_agree(name: str, generator: torch.Generator) -> None:
    cls, build, _ = BUILDERS[name]
    p0 = torch.randn(7, 5, generator=generator)
    grads = [torch.randn(7, 5, generator=generator) for _ in range(8)]
    results = [_run(build, cls(lr=3e-3, implementation=k), p0, grads) for k in KERNELS]
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], rtol=1e-5, atol=1e-6)
    assert not torch.equal(results[0], p0)


def test_optimizer_state_round_trip(generator: torch.Generator) -> None:
    # Resuming from a state_dict continues exactly (the run's checkpoint relies on it).
    p0 = torch.randn(4, 3, generator=generator)
    grads = _grads(generator, 6)
    config = AdamWConfig(lr=1e-2, weight_decay=0.05)
    straight = _run(build_adamw, config, p0, grads)

    p = torch.nn.Parameter(p0.clone())
    opt = build_adamw(config, params=[p], device="cpu")
    for g in grads[:3]:
        p.grad = g.clone()
        opt.step()
    state = opt.state_dict()
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = build_adamw(config, params=[q], device="cpu")
    opt2.load_state_dict(state)
    for g in grads[3:]:
        q.grad = g.clone()
        opt2.step()
    torch.testing.assert_close(q.detach(), straight)


def test_config_is_frozen() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        AdamWConfig().lr = 1.0  # type: ignore[misc]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(BUILDERS))
def test_cuda_auto_is_fused_and_kernels_agree(name: str, generator: torch.Generator) -> None:
    cls, build, _ = BUILDERS[name]
    p0 = torch.randn(33, 17, generator=generator)
    grads = [torch.randn(33, 17, generator=generator) for _ in range(5)]

    def run(implementation: str) -> tuple[torch.Tensor, torch.optim.Optimizer]:
        p = torch.nn.Parameter(p0.cuda())
        opt = build(cls(lr=3e-3, implementation=implementation), params=[p], device="cuda")
        for g in grads:
            p.grad = g.cuda()
            opt.step()
        return p.detach().cpu(), opt

    auto, opt = run("auto")
    assert opt.defaults["fused"] is True
    for kernel in ("foreach", "for-loop"):
        torch.testing.assert_close(run(kernel)[0], auto, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_run(build, cls(lr=3e-3), p0, grads), auto, rtol=1e-5, atol=1e-6)
