"""Tests of denoisekit-karras, written with denoisekit's testing kit.

``pytest`` here loads the kit as a plugin (``addopts = "-p denoisekit.testing"`` in
pyproject.toml): the ``tiny_recipe`` fixture, and :class:`ComponentConformance`, which runs
the conformance suite of each kind and a tiny training run on every component below.
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any, ClassVar

import pytest
import torch
from denoisekit import Denoiser, DiscreteSchedule, diffusion
from denoisekit.testing import ComponentConformance, ToyBackbone, toy_schedule, train_tiny

from denoisekit_karras.sampler import EulerConfig, EulerSampler, HeunConfig, HeunSampler, sigmas_of

PLUGIN = "denoisekit_karras.plugin"


class TestKarras(ComponentConformance):
    plugins: ClassVar[list[Any]] = [PLUGIN]
    configs: ClassVar[dict[str, list[Any]]] = {
        "sampler:euler": [
            EulerConfig(),
            EulerConfig(steps=7, spacing="trailing", clip_denoised=True),
        ],
        "sampler:heun": [HeunConfig(), HeunConfig(steps=3, spacing="linspace", rho=3.0)],
    }
    run_options: ClassVar[dict[str, dict[str, Any]]] = {
        "sampler:euler": {"steps": 4},
        "sampler:heun": {"steps": 3},
    }


@pytest.mark.parametrize("steps", [1, 2, 5, 18, 99, 100, 100])
def test_karras_timesteps_are_decreasing_and_span_the_schedule(steps):
    ab = toy_schedule(100).alphas_cumprod
    ts = EulerSampler(EulerConfig(steps=steps)).timesteps(ab)
    assert len(ts) == steps and all(a > b for a, b in itertools.pairwise(ts))
    assert ts[0] == 99
    assert steps == 1 or ts[-1] == 0


@pytest.mark.parametrize("n", [5, 10, 18])
def test_karras_levels_are_eq_5_exactly_no_snapping(n):
    """The noise levels visited are EDM eq. 5's, at fractional timesteps: the sigma the
    sampler steps with, from the denoiser's log-SNR interpolation, is the level itself."""
    sched = DiscreteSchedule.from_betas(torch.linspace(1e-4, 0.02, 1000))
    sigma = sigmas_of(sched.alphas_cumprod.tolist())
    rho = 7.0
    ts = HeunSampler(HeunConfig(steps=n, rho=rho)).timesteps(sched.alphas_cumprod)
    steps = diffusion.sampling_steps(sched, ts, torch.zeros(1))
    got = sigmas_of(steps.alpha_bar)
    for i, level in enumerate(got):
        expected = (
            sigma[-1] ** (1 / rho) + i / (n - 1) * (sigma[0] ** (1 / rho) - sigma[-1] ** (1 / rho))
        ) ** rho
        assert math.isclose(level, expected, rel_tol=1e-9)
    assert any(not float(t).is_integer() for t in ts)  # fractional, not snapped
    assert steps.t.dtype == torch.float64


def test_heun_makes_two_evaluations_per_step_but_the_last():
    sched = toy_schedule(50)
    model = ToyBackbone(1)
    sampler = HeunSampler(HeunConfig(steps=6))
    sampler.sample(Denoiser(model, sched), torch.randn(2, 1, 2, 2), generator=None)
    assert model.calls == 11 == sampler.num_evaluations(50)


def test_loss_by_sigma_logs_each_band(tiny_recipe, tmp_path):
    path = tiny_recipe({"hooks": {"loss-by-sigma": {"bins": 3}}, "train": {"steps": 4}})
    run = train_tiny(path, plugins=[PLUGIN], out_dir=tmp_path / "run")
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 4
    bands = {k for row in rows for k in row if k.startswith("loss_sigma/")}
    assert 1 <= len(bands) <= 3
    for row in rows:
        for key in bands & set(row):
            assert math.isfinite(row[key]) and row[key] > 0
    assert run.hooks["loss-by-sigma"].counts.sum().item() == 0  # reset at every log

    # Scalars that are not the loop's log line (an evaluation's) neither get the bands nor
    # reset them.
    hook = run.hooks["loss-by-sigma"]
    hook.counts += 1
    other: dict[str, float] = {"fd": 1.0}
    hook.denoisekit_log_scalars(scalars=other)
    assert other == {"fd": 1.0} and hook.counts.sum().item() == 3


def test_registers_exactly_its_components(pm):
    """The ``pm`` fixture: a fresh plugin manager with no plugins at all."""
    import denoisekit_karras.plugin

    pm.register_named(denoisekit_karras.plugin, "karras", "api")
    names = {(s.kind, s.name) for specs in pm.hook.denoisekit_components() for s in specs}
    expected = {("sampler", "euler"), ("sampler", "heun"), ("backbone", "tinyconv")}
    assert names == expected | {("hook", "loss-by-sigma")}


def test_names_do_not_clash_with_the_builtins(registry):
    """The ``registry`` fixture: the built-in components."""
    assert "ddim" in registry.names("sampler")
    assert not {"euler", "heun"} & set(registry.names("sampler"))
    assert "tinyconv" not in registry.names("backbone")
