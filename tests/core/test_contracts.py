"""Contract checks: a broken component is rejected when the registry is built, naming its plugin.

Also: the public plugin API (what ``import denoisekit`` offers), the conformance checks of
``denoisekit.testing`` catching broken components, and the built-ins passing the same
suites that third-party plugins run (:class:`ComponentConformance`).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any, ClassVar

import attrs
import pytest
import torch
from torch import nn

import denoisekit
from denoisekit import ComponentSpec, hookimpl, option
from denoisekit.errors import PluginLoadError, RegistryError
from denoisekit.host.contract_checks import _PROBE_CACHE, contract_problems
from denoisekit.host.plugin_manager import BUILTIN_PLUGINS, get_plugin_manager
from denoisekit.host.registry import Registry
from denoisekit.testing import (
    ComponentConformance,
    check_backbone,
    check_hook,
    check_lr_schedule,
    check_optimizer,
)
from denoisekit.testing.conformance import single_thread


@attrs.frozen(kw_only=True)
class Cfg:
    steps: int = option(3, "steps")


@attrs.frozen(kw_only=True)
class NetCfg:
    in_channels: int = option(1, "channels")
    image_size: int = option(4, "size")
    width: int = option(4, "width")


class Provider:
    """A plugin object returning the given specs."""

    def __init__(self, *specs: ComponentSpec) -> None:
        self.specs = specs

    @hookimpl
    def denoisekit_components(self):
        return list(self.specs)


def _registry(*specs: ComponentSpec, name: str = "my-plugin") -> Registry:
    pm = get_plugin_manager(builtins=False, autoload=False)
    pm.register_named(Provider(*specs), name, "api")
    return Registry.from_plugin_manager(pm)


def _rejected(*specs: ComponentSpec, match: str) -> str:
    with pytest.raises(RegistryError, match=match) as info:
        _registry(*specs)
    message = str(info.value)
    assert "plugin 'my-plugin' (api)" in message  # names the plugin and where it came from
    return message


# --------------------------------------------------------------------------- samplers


class NoSample:
    def __init__(self, config: Cfg) -> None:
        self.config = config

    def num_evaluations(self, num_timesteps: int) -> int:
        return 1


class NoCount:
    def __init__(self, config: Cfg) -> None:
        self.config = config

    def sample(self, denoiser, shape, **kwargs):
        return torch.zeros(shape)


def test_sampler_class_without_sample_is_rejected():
    spec = ComponentSpec(kind="sampler", name="nosample", config=Cfg, build=NoSample)
    message = _rejected(spec, match=r"sampler 'nosample' breaks the sampler contract")
    assert "NoSample has no sample()" in message


def test_sampler_factory_declaring_a_class_without_num_evaluations_is_rejected():
    def build(config: Cfg) -> NoCount:
        return NoCount(config)

    spec = ComponentSpec(kind="sampler", name="nocount", config=Cfg, build=build)
    _rejected(spec, match=r"NoCount has no num_evaluations\(\)")


def test_undeclared_sampler_is_caught_by_its_probe():
    spec = ComponentSpec(kind="sampler", name="plain", config=Cfg, build=lambda c: object())
    assert _registry(spec).names("sampler") == ["plain"]  # nothing to see without building
    probed = attrs.evolve(spec, probe={})
    _rejected(probed, match=r"the built object has no sample\(\) or num_evaluations\(\)")


# --------------------------------------------------------------------------- config classes


def test_config_that_is_not_an_attrs_class_names_the_plugin():
    class NotAttrs:
        steps = 3

    class Bad:
        @hookimpl
        def denoisekit_components(self):
            return [ComponentSpec(kind="sampler", name="bad", config=NotAttrs, build=NoSample)]

    pm = get_plugin_manager(builtins=False, autoload=False)
    pm.register_named(Bad(), "bad-plugin", "api")
    with pytest.raises(PluginLoadError, match="must be an attrs class") as info:
        Registry.from_plugin_manager(pm)
    assert "plugin 'bad-plugin' (api)" in str(info.value)


def test_probe_must_name_options_of_the_config():
    with pytest.raises(ValueError, match=r"unknown options \['stpes'\]"):
        ComponentSpec(kind="sampler", name="s", config=Cfg, build=NoSample, probe={"stpes": 2})
    probed = "only autoencoder, schedule, backbone, loss, sampler, hook"
    with pytest.raises(ValueError, match=probed):
        ComponentSpec(kind="data", name="d", config=Cfg, build=NoSample, probe={})


def test_invalid_probe_options_are_reported():
    spec = ComponentSpec(
        kind="backbone", name="net", config=NetCfg, build=lambda c: nn.Identity(), probe={}
    )

    @attrs.frozen(kw_only=True)
    class Strict:
        in_channels: int = option(1, "c", validator=attrs.validators.gt(0))
        image_size: int = option(4, "s")

    bad = attrs.evolve(spec, config=Strict, probe={"in_channels": 0})
    _rejected(bad, match=r"probe options \{'in_channels': 0\} do not make a valid config")


# --------------------------------------------------------------------------- backbones


class WrongShape(nn.Module):
    """Returns twice the channels (a learned-variance head) without saying so."""

    def __init__(self, config: NetCfg) -> None:
        super().__init__()
        self.conv = nn.Conv2d(config.in_channels, 2 * config.in_channels, 1)

    def forward(self, x_t, t, cond=None):
        return self.conv(x_t)


class Good(nn.Module):
    def __init__(self, config: NetCfg) -> None:
        super().__init__()
        self.conv = nn.Conv2d(config.in_channels, config.in_channels, 3, padding=1)
        self.time = nn.Linear(1, config.in_channels)

    def forward(self, x_t, t, cond=None):
        return self.conv(x_t) + self.time(t[:, None].float() / 100)[:, :, None, None]


def test_backbone_with_wrong_output_shape_on_the_probe_is_rejected():
    spec = ComponentSpec(
        kind="backbone", name="wide", config=NetCfg, build=WrongShape, probe={"image_size": 4}
    )
    message = _rejected(spec, match="backbone 'wide' breaks the backbone contract")
    assert "on a probe input of shape (2, 1, 4, 4) the backbone returned (2, 2, 4, 4)" in message


def test_backbone_without_probe_is_only_checked_statically():
    spec = ComponentSpec(kind="backbone", name="wide", config=NetCfg, build=WrongShape)
    assert _registry(spec).names("backbone") == ["wide"]


def test_backbone_class_that_is_not_a_module_is_rejected():
    spec = ComponentSpec(kind="backbone", name="nomod", config=NetCfg, build=NoSample)
    _rejected(spec, match="NoSample is not a torch.nn.Module")


def test_backbone_probe_needs_the_image_shape_options():
    spec = ComponentSpec(
        kind="backbone", name="noshape", config=Cfg, build=lambda c: nn.Identity(), probe={}
    )
    _rejected(spec, match="needs in_channels and image_size options")


def test_backbone_probe_that_raises_is_reported():
    def build(config: NetCfg) -> nn.Module:
        raise RuntimeError("out of memory")

    spec = ComponentSpec(kind="backbone", name="boom", config=NetCfg, build=build, probe={})
    _rejected(spec, match="building the probe failed: RuntimeError: out of memory")


def test_good_backbone_probe_passes_once_and_leaves_the_rng_alone():
    calls = []

    def build(config: NetCfg) -> Good:
        calls.append(config)
        return Good(config)

    spec = ComponentSpec(
        kind="backbone", name="good", config=NetCfg, build=build, probe={"width": 2}
    )
    state = torch.get_rng_state()
    for _ in range(3):
        _registry(spec)
    assert torch.equal(torch.get_rng_state(), state)
    assert calls == [NetCfg(width=2)]  # probed once per process (cached)
    assert contract_problems(spec) == []
    assert any(key[1] == "good" for key in _PROBE_CACHE)


# --------------------------------------------------------------------------- other kinds


def test_factories_must_accept_the_build_context_of_their_kind():
    loss = ComponentSpec(kind="loss", name="l", config=Cfg, build=lambda config: None)
    _rejected(loss, match=r"build must accept \(config, schedule=...\)")
    opt = ComponentSpec(kind="optimizer", name="o", config=Cfg, build=lambda config, params: 0)
    _rejected(opt, match=r"build must accept \(config, params=..., device=...\)")
    data = ComponentSpec(kind="data", name="d", config=Cfg, build=lambda config, **context: 0)
    assert _registry(data).names("data") == ["d"]


def test_loss_probe_checks_prediction_type_and_per_sample_values():
    class Reduced:
        prediction_type = "eps"

        def __init__(self, config, *, schedule):
            pass

        def __call__(self, output, *, x0, noise, t):
            return (output - noise).square().mean()

    spec = ComponentSpec(kind="loss", name="reduced", config=Cfg, build=Reduced, probe={})
    _rejected(spec, match=r"one value per sample, shape \(B,\) = \(2,\); got \(\)")

    class Unknown(Reduced):
        prediction_type = "score"

    spec = ComponentSpec(kind="loss", name="score", config=Cfg, build=Unknown, probe={})
    _rejected(spec, match="prediction_type must be one of eps, x0, v, got 'score'")


def test_schedule_probe_checks_alphas_cumprod_length():
    class Short:
        num_timesteps = 10
        alphas_cumprod = torch.linspace(0.9, 0.1, 9, dtype=torch.float64)

    spec = ComponentSpec(
        kind="schedule", name="short", config=Cfg, build=lambda c: Short(), probe={}
    )
    _rejected(spec, match=r"alphas_cumprod must be a tensor of shape \(10,\), got \(9,\)")


def test_data_class_without_getitem_is_rejected():
    class NoItems:
        def __init__(self, config, *, root, train):
            pass

        def __len__(self):
            return 0

    spec = ComponentSpec(kind="data", name="empty", config=Cfg, build=NoItems)
    _rejected(spec, match=r"NoItems has no __getitem__\(\)")


class TypoHook:
    def __init__(self, config: Cfg) -> None:
        pass

    @hookimpl
    def denoisekit_train_step_ends(self, run):
        pass


class ArgHook:
    def __init__(self, config: Cfg) -> None:
        pass

    @hookimpl
    def denoisekit_train_start(self, run, step):
        pass


def test_hook_implementing_an_unknown_hook_is_rejected_with_a_suggestion():
    spec = ComponentSpec(kind="hook", name="typo", config=Cfg, build=TypoHook)
    _rejected(spec, match=r"unknown hook 'denoisekit_train_step_ends' \(did you mean")


def test_hook_asking_for_an_argument_the_hook_does_not_pass_is_rejected():
    spec = ComponentSpec(kind="hook", name="arg", config=Cfg, build=ArgHook)
    _rejected(spec, match=r"asks for \['step'\], which hook denoisekit_train_start does not pass")


def test_undeclared_hook_is_checked_by_its_probe():
    spec = ComponentSpec(kind="hook", name="typo", config=Cfg, build=lambda c: TypoHook(c))
    assert _registry(spec).names("hook") == ["typo"]
    _rejected(attrs.evolve(spec, probe={}), match="unknown hook")
    nothing = ComponentSpec(
        kind="hook", name="idle", config=Cfg, build=lambda c: object(), probe={}
    )
    _rejected(nothing, match="implements no hook")


def test_contract_checks_can_be_turned_off():
    spec = ComponentSpec(kind="sampler", name="nosample", config=Cfg, build=NoSample)
    pm = get_plugin_manager(builtins=False, autoload=False)
    pm.register_named(Provider(spec), "p", "api")
    assert Registry.from_plugin_manager(pm, check_contracts=False).names("sampler") == ["nosample"]


def test_builtins_meet_their_contracts():
    registry = Registry.from_plugin_manager(get_plugin_manager(autoload=False))
    for entry in registry.entries():
        assert contract_problems(entry.spec) == [], entry


# --------------------------------------------------------------------------- public API


def test_public_api_is_importable_and_documented():
    for name in denoisekit.__all__:
        value = getattr(denoisekit, name)
        if callable(value) or isinstance(value, type(denoisekit)):
            assert (value.__doc__ or "").strip(), f"denoisekit.{name} has no docstring"
    assert denoisekit.Denoiser is __import__("denoisekit.denoiser").denoiser.Denoiser
    assert denoisekit.diffusion.randn is not None
    assert set(dir(denoisekit)) >= set(denoisekit.__all__)
    with pytest.raises(AttributeError, match="no attribute 'Denoisr'"):
        _ = denoisekit.Denoisr


def test_importing_denoisekit_does_not_import_torch():
    code = "import sys, denoisekit; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- the checks


@attrs.frozen(kw_only=True)
class Empty:
    pass


def _net_spec(module_cls: type, **probe: Any) -> ComponentSpec:
    return ComponentSpec(kind="backbone", name="net", config=NetCfg, build=module_cls, probe=probe)


class MixesBatch(Good):
    def forward(self, x_t, t, cond=None):
        return super().forward(x_t, t) - x_t.mean(dim=0, keepdim=True)


class IgnoresTime(Good):
    def forward(self, x_t, t, cond=None):
        return self.conv(x_t)


@pytest.mark.parametrize(
    ("module_cls", "message"),
    [
        (WrongShape, r"output shape \(3, 2, 4, 4\) != input shape \(3, 1, 4, 4\)"),
        (MixesBatch, "image 1 depends on the other images"),
        (IgnoresTime, r"parameters get no gradient: \['time.weight', 'time.bias'\]"),
    ],
    ids=["shape", "batch", "unused"],
)
def test_check_backbone_catches(module_cls, message):
    with pytest.raises(AssertionError, match=message):
        check_backbone(_net_spec(module_cls))


def test_check_backbone_catches_ignored_time():
    class NoTime(Good):
        def forward(self, x_t, t, cond=None):
            return self.conv(x_t) + 0 * self.time(t[:, None].float())[:, :, None, None]

    with pytest.raises(AssertionError, match="output ignores t"):
        check_backbone(_net_spec(NoTime))
    check_backbone(_net_spec(Good))


def test_check_optimizer_and_lr_schedule_catch_broken_ones():
    class Frozen(torch.optim.SGD):
        def __init__(self, params, lr=0.1):
            super().__init__(params, lr=lr)

        def step(self, closure=None):
            return None

    spec = ComponentSpec(
        kind="optimizer",
        name="frozen",
        config=Empty,
        build=lambda c, *, params, device: Frozen(params),
    )
    with pytest.raises(AssertionError, match="left the parameters unchanged"):
        check_optimizer(spec)

    class Forgetful(torch.optim.lr_scheduler.LambdaLR):
        def load_state_dict(self, state_dict):
            pass  # resumes from the start

    decay = ComponentSpec(
        kind="lr_schedule",
        name="forgetful",
        config=Empty,
        build=lambda c, *, optimizer, total_steps: Forgetful(optimizer, lambda s: 0.9**s),
    )
    with pytest.raises(AssertionError, match="after load_state_dict the rates are"):
        check_lr_schedule(decay)


def test_check_hook_catches_a_typo():
    spec = ComponentSpec(kind="hook", name="typo", config=Cfg, build=TypoHook)
    with pytest.raises(AssertionError, match="unknown hook"):
        check_hook(spec)


def test_single_thread_restores_the_thread_count():
    before = torch.get_num_threads()
    with single_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


# --------------------------------------------------------------------------- built-ins


class TestBuiltinConformance(ComponentConformance):
    """The built-ins pass the suite third-party plugins run (tiny runs: elsewhere)."""

    plugins: ClassVar[list[Any]] = [
        m for m in BUILTIN_PLUGINS if ".data." not in m and ".metrics." not in m
    ]
    configs: ClassVar[dict[str, list[Any]]] = {
        "backbone:unet": [
            {
                "in_channels": 1,
                "image_size": 8,
                "channels": 8,
                "channel_mults": (1, 2),
                "num_res_blocks": 1,
                "attention_resolutions": (4,),
                "groups": 4,
            }
        ],
        "autoencoder:kl": [  # factors 2, 1 (one level, no attention or 1×1 convs) and 4
            None,
            {
                "in_channels": 3,
                "block_channels": (8,),
                "groups": 4,
                "latent_channels": 1,
                "mid_attention": False,
                "quant_conv": False,
                "post_quant_conv": False,
            },
            {
                "in_channels": 2,
                "block_channels": (8, 16, 16),
                "num_res_blocks": 2,
                "latent_channels": 4,
                "groups": 8,
            },
        ],
    }
    run_kinds: ClassVar[tuple[str, ...]] = ()
