"""Cosine and linear schedules against their published formulas (float64 math/numpy)."""

from __future__ import annotations

import math

import attrs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from denoisekit.plugins.schedules import cosine, linear
from denoisekit.testing.conformance import check_schedule, spec_id

SPECS = [*cosine.denoisekit_components(), *linear.denoisekit_components()]


def f_cos(t: float, T: int, s: float) -> float:
    """Nichol & Dhariwal 2021, eq. 17: f(t) = cos²(((t / T) + s) / (1 + s) · π / 2)."""
    return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2


# --------------------------------------------------------------------------- cosine


@pytest.mark.parametrize("T, s", [(1000, 0.008), (4000, 0.008), (50, 0.0), (100, 0.05)])
def test_cosine_alpha_bar_is_the_formula(T, s):
    sched = cosine.build_cosine(cosine.CosineScheduleConfig(num_timesteps=T, s=s))
    ab = sched.alphas_cumprod.numpy()
    expected = np.array([f_cos(t, T, s) / f_cos(0, T, s) for t in range(1, T + 1)])
    # Where no beta was clipped (every t but the last), alpha_bar(t) = f(t) / f(0).
    clipped = 1 - expected[1:] / expected[:-1] > 0.999
    n_free = 1 + int(np.argmax(clipped)) if clipped.any() else T
    assert n_free >= T - 1
    np.testing.assert_allclose(ab[:n_free], expected[:n_free], rtol=1e-12, atol=0)


def test_cosine_betas_clipped_like_squaredcos_cap_v2():
    T = 1000
    sched = cosine.build_cosine(cosine.CosineScheduleConfig())
    # Independent: betas from the ratio of f, clipped at 0.999, alpha_bar = cumprod(1 - beta).
    betas = np.array(
        [min(1 - f_cos(i + 1, T, 0.008) / f_cos(i, T, 0.008), 0.999) for i in range(T)]
    )
    np.testing.assert_allclose(sched.betas.numpy(), betas, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(sched.alphas_cumprod.numpy(), np.cumprod(1 - betas), rtol=1e-12)
    assert sched.betas[-1].item() == pytest.approx(0.999, abs=1e-12)  # f(T) = 0: clipped
    assert sched.betas.max().item() <= 0.999 + 1e-12


def test_cosine_max_beta_option():
    sched = cosine.build_cosine(cosine.CosineScheduleConfig(num_timesteps=100, max_beta=0.5))
    assert sched.betas.max().item() == pytest.approx(0.5)
    assert sched.betas[-1].item() == pytest.approx(0.5)


# --------------------------------------------------------------------------- linear


@pytest.mark.parametrize(
    "T, lo, hi", [(1000, 1e-4, 0.02), (500, 2e-4, 0.04), (4000, 2.5e-5, 0.005), (100, 1e-3, 0.2)]
)
def test_linear_betas_rescaled_by_1000_over_T(T, lo, hi):
    sched = linear.build_linear(linear.LinearScheduleConfig(num_timesteps=T))
    betas = np.linspace(lo, hi, T)
    np.testing.assert_allclose(sched.betas.numpy(), betas, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(sched.alphas_cumprod.numpy(), np.cumprod(1 - betas), rtol=1e-12)


def test_linear_custom_ends():
    sched = linear.build_linear(
        linear.LinearScheduleConfig(num_timesteps=1000, beta_start=1e-3, beta_end=1e-3)
    )
    np.testing.assert_allclose(sched.betas.numpy(), np.full(1000, 1e-3), rtol=1e-9)


# --------------------------------------------------------------------------- invariants


@settings(max_examples=30, deadline=None)
@given(T=st.integers(1, 3000), s=st.floats(0.0, 0.1), max_beta=st.floats(0.5, 0.9999))
def test_cosine_is_a_valid_schedule(T, s, max_beta):
    config = cosine.CosineScheduleConfig(num_timesteps=T, s=s, max_beta=max_beta)
    sched = cosine.build_cosine(config)
    ab = sched.alphas_cumprod
    assert sched.num_timesteps == T
    assert bool(((ab > 0) & (ab < 1)).all()) and bool((ab[1:] < ab[:-1]).all())


@settings(max_examples=30, deadline=None)
@given(T=st.integers(21, 3000), start=st.floats(1e-6, 1e-3), width=st.floats(0.0, 0.019))
def test_linear_is_a_valid_schedule(T, start, width):
    cfg = linear.LinearScheduleConfig(num_timesteps=T, beta_start=start, beta_end=start + width)
    ab = linear.build_linear(cfg).alphas_cumprod
    assert bool(((ab > 0) & (ab < 1)).all()) and bool((ab[1:] < ab[:-1]).all())


def test_respacing_keeps_alpha_bar_at_kept_timesteps():
    sched = cosine.build_cosine(cosine.CosineScheduleConfig())
    kept = [0, 1, 250, 500, 998, 999]
    new, tmap = sched.respace(kept)
    assert tmap.tolist() == kept
    np.testing.assert_array_equal(new.alphas_cumprod.numpy(), sched.alphas_cumprod.numpy()[kept])


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "cls, kwargs, field",
    [
        (cosine.CosineScheduleConfig, {"num_timesteps": 0}, "num_timesteps"),
        (cosine.CosineScheduleConfig, {"num_timesteps": -5}, "num_timesteps"),
        (cosine.CosineScheduleConfig, {"s": -0.1}, "s"),
        (cosine.CosineScheduleConfig, {"max_beta": 1.0}, "max_beta"),
        (cosine.CosineScheduleConfig, {"max_beta": 0.0}, "max_beta"),
        (linear.LinearScheduleConfig, {"num_timesteps": 0}, "num_timesteps"),
        (linear.LinearScheduleConfig, {"beta_start": 0.0}, "beta_start"),
        (linear.LinearScheduleConfig, {"beta_end": 1e-5}, "beta_end"),  # < beta_start
        (linear.LinearScheduleConfig, {"num_timesteps": 10}, "beta_end"),  # 0.02 * 100 >= 1
    ],
)
def test_config_rejects_bad_values(cls, kwargs, field):
    with pytest.raises((ValueError, TypeError), match=f"'{field}'"):
        cls(**kwargs)


def test_configs_are_frozen():
    cfg = cosine.CosineScheduleConfig()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cfg.num_timesteps = 10  # type: ignore[misc]


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_schedule_conformance(spec):
    assert spec.kind == "schedule"
    check_schedule(spec)


@pytest.mark.parametrize("module", [cosine, linear])
def test_timesteps_are_bounded_and_stated_as_a_fact(module) -> None:
    """A schedule of 10**30 timesteps used to hang building its table, eating memory."""
    from denoisekit.config import MAX_TIMESTEPS as T_MAX

    (spec,) = module.denoisekit_components()
    assert spec.facts(spec.config(num_timesteps=37)) == {"num_timesteps": 37}
    assert spec.config(num_timesteps=T_MAX)
    for T in (T_MAX + 1, 10**30, 0):
        message = f"'num_timesteps' must be an integer from 1 to {T_MAX}"
        with pytest.raises(ValueError, match=message):
            spec.config(num_timesteps=T)


def test_a_huge_schedule_fails_recipe_check_at_once(tmp_path) -> None:
    from denoisekit.errors import RecipeError
    from denoisekit.host.recipe import load_recipe
    from denoisekit.testing import write_recipe

    path = write_recipe(tmp_path)
    for T in ("1000000", "1000000000000000000000000000000"):
        with pytest.raises(RecipeError, match=r"schedule\.num_timesteps: "):
            load_recipe(path, [f"schedule.num_timesteps={T}"])


@pytest.mark.parametrize(
    "overrides",
    [
        ["schedule.s=1e300"],  # every f(t) the same: betas of 0
        ["schedule.max_beta=1e-300"],  # 1 - beta rounds to 1: alpha_bar of 1
        ["schedule.type=linear", "schedule.beta_start=1e-300", "schedule.beta_end=1e-300"],
    ],
)
def test_options_giving_no_valid_schedule_fail_at_load(tmp_path, overrides) -> None:
    """These used to pass recipe check and end the training build in a ValueError traceback."""
    from denoisekit.errors import RecipeError
    from denoisekit.host.recipe import load_recipe
    from denoisekit.testing import write_recipe

    with pytest.raises(RecipeError, match=r"schedule: these options give no valid schedule in "):
        load_recipe(write_recipe(tmp_path), overrides)


def test_cosine_offset_must_be_finite() -> None:
    for s in (math.inf, math.nan):
        with pytest.raises(ValueError, match="'s' must be a finite number >= 0"):
            cosine.CosineScheduleConfig(s=s)
