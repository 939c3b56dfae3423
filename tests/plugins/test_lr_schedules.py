"""Learning-rate schedules: values against the closed forms, resume, param groups, options."""

from __future__ import annotations

import io
import itertools
import math

import pytest
import torch

from denoisekit.errors import RecipeError
from denoisekit.plugins.optim import lr_constant, lr_warmup_cosine
from denoisekit.plugins.optim.lr_constant import ConstantLRConfig, build_constant
from denoisekit.plugins.optim.lr_warmup_cosine import WarmupCosineConfig, build_warmup_cosine


def _sgd(*lrs: float) -> torch.optim.SGD:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def _lrs(scheduler, optimizer, steps: int) -> list[list[float]]:
    """The learning rate of every group used by optimizer steps 0 .. steps-1."""
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return out


def test_registration() -> None:
    specs = lr_constant.denoisekit_components() + lr_warmup_cosine.denoisekit_components()
    assert {(s.kind, s.name) for s in specs} == {
        ("lr_schedule", "constant"),
        ("lr_schedule", "warmup-cosine"),
    }


# --------------------------------------------------------------------------- constant


def test_constant_without_warmup() -> None:
    opt = _sgd(0.3)
    sched = build_constant(ConstantLRConfig(), optimizer=opt, total_steps=100)
    assert all(lr == [0.3] for lr in _lrs(sched, opt, 20))


@pytest.mark.parametrize(
    ("start", "expected"),
    # lr = 2.0, W = 4: step s < 4 uses 2 * (a + (1 - a) * s / 4), then 2.
    [(0.0, [0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0]), (0.5, [1.0, 1.25, 1.5, 1.75, 2.0, 2.0, 2.0])],
)
def test_constant_with_warmup(start: float, expected: list[float]) -> None:
    opt = _sgd(2.0)
    sched = build_constant(
        ConstantLRConfig(warmup_steps=4, warmup_start=start), optimizer=opt, total_steps=None
    )
    got = [lr[0] for lr in _lrs(sched, opt, 7)]
    assert got == pytest.approx(expected, abs=1e-12)


# --------------------------------------------------------------------------- warmup-cosine

# lr = 1.0, min_lr = 0.1, W = 10, T = 110: cosine over 100 steps.
BASE, MIN, W, T = 1.0, 0.1, 10, 110
CLOSED_FORM = {
    0: 0.0,  # start of warmup
    5: 0.5,  # mid-warmup: 5 / 10
    10: 1.0,  # end of warmup: the base rate
    35: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)),  # a quarter into the cosine
    60: 0.55,  # half-way: (lr + min_lr) / 2
    109: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 99 / 100)),
    110: 0.1,  # end of the run
    130: 0.1,  # past the end: stays at min_lr
}


def test_warmup_cosine_closed_form() -> None:
    opt = _sgd(BASE)
    sched = build_warmup_cosine(
        WarmupCosineConfig(warmup_steps=W, min_lr=MIN), optimizer=opt, total_steps=T
    )
    lrs = [lr[0] for lr in _lrs(sched, opt, 131)]
    for step, expected in CLOSED_FORM.items():
        assert lrs[step] == pytest.approx(expected, abs=1e-12), step
    # monotone: up during warmup, down after
    assert all(a < b for a, b in itertools.pairwise(lrs[: W + 1]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[W:]))


def test_warmup_cosine_warmup_start_fraction() -> None:
    opt = _sgd(2.0)
    config = WarmupCosineConfig(warmup_steps=4, warmup_start=0.25)
    sched = build_warmup_cosine(config, optimizer=opt, total_steps=8)
    lrs = [lr[0] for lr in _lrs(sched, opt, 9)]
    # 2 * (0.25 + 0.75 * s / 4) for s < 4; then cosine to 0 over 4 steps.
    assert lrs[:5] == pytest.approx([0.5, 0.875, 1.25, 1.625, 2.0])
    assert lrs[6] == pytest.approx(1.0)  # half-way through the cosine
    assert lrs[8] == pytest.approx(0.0)


def test_warmup_cosine_without_warmup_starts_at_base() -> None:
    opt = _sgd(0.4)
    sched = build_warmup_cosine(WarmupCosineConfig(), optimizer=opt, total_steps=4)
    lrs = [lr[0] for lr in _lrs(sched, opt, 6)]
    # 0.4 * (1 + cos(pi * s / 4)) / 2
    assert lrs == pytest.approx([0.4, 0.4 * (1 + 2**-0.5) / 2, 0.2, 0.4 * (1 - 2**-0.5) / 2, 0, 0])


def test_warmup_equal_to_total_steps() -> None:
    opt = _sgd(1.0)
    config = WarmupCosineConfig(warmup_steps=4, min_lr=0.05)
    sched = build_warmup_cosine(config, optimizer=opt, total_steps=4)
    lrs = [lr[0] for lr in _lrs(sched, opt, 6)]
    assert lrs == pytest.approx([0.0, 0.25, 0.5, 0.75, 0.05, 0.05])


def test_param_groups_follow_their_own_rate() -> None:
    opt = _sgd(1.0, 0.5, 0.0)
    config = WarmupCosineConfig(warmup_steps=2, min_lr=0.1)
    sched = build_warmup_cosine(config, optimizer=opt, total_steps=6)
    lrs = _lrs(sched, opt, 8)
    assert lrs[1] == pytest.approx([0.5, 0.25, 0.0])  # half-way through warmup
    assert lrs[2] == pytest.approx([1.0, 0.5, 0.0])
    assert lrs[4] == pytest.approx([0.55, 0.3, 0.0])  # half-way: (lr + min_lr) / 2
    assert lrs[7] == pytest.approx([0.1, 0.1, 0.0])  # min_lr is absolute; frozen stays frozen


def test_constant_param_groups() -> None:
    opt = _sgd(1.0, 0.5)
    sched = build_constant(ConstantLRConfig(warmup_steps=2), optimizer=opt, total_steps=10)
    assert _lrs(sched, opt, 3) == [[0.0, 0.0], [0.5, 0.25], [1.0, 0.5]]


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize(
    ("build", "config"),
    [
        (build_constant, ConstantLRConfig(warmup_steps=5, warmup_start=0.1)),
        (build_warmup_cosine, WarmupCosineConfig(warmup_steps=5, min_lr=0.01)),
    ],
)
def test_state_dict_round_trip(build, config) -> None:
    def fresh():
        p = torch.nn.Parameter(torch.ones(3))
        opt = torch.optim.SGD([p], lr=0.2)
        return p, opt, build(config, optimizer=opt, total_steps=20)

    _, opt, sched = fresh()
    straight = _lrs(sched, opt, 20)

    _, opt, sched = fresh()
    first = _lrs(sched, opt, 8)
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # plain data only, safe loading works

    _, opt2, sched2 = fresh()
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    resumed = first + _lrs(sched2, opt2, 12)
    assert resumed == straight


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("cls", [ConstantLRConfig, WarmupCosineConfig])
@pytest.mark.parametrize(
    ("field", "value"),
    [("warmup_steps", -1), ("warmup_steps", 2.5), ("warmup_start", 1.5), ("warmup_start", -0.1)],
)
def test_options_rejected(cls, field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"'{field}'"):
        cls(**{field: value})


@pytest.mark.parametrize("value", [-1e-5, math.nan])
def test_min_lr_rejected(value: float) -> None:
    with pytest.raises(ValueError, match="'min_lr'"):
        WarmupCosineConfig(min_lr=value)


def test_build_errors_are_one_line() -> None:
    with pytest.raises(RecipeError, match="warmup_steps") as info:
        build_warmup_cosine(
            WarmupCosineConfig(warmup_steps=11), optimizer=_sgd(1.0), total_steps=10
        )
    assert "\n" not in str(info.value)
    with pytest.raises(RecipeError, match="min_lr"):
        build_warmup_cosine(WarmupCosineConfig(min_lr=0.5), optimizer=_sgd(0.1), total_steps=10)
    with pytest.raises(RecipeError, match="total steps"):
        build_warmup_cosine(WarmupCosineConfig(), optimizer=_sgd(0.1), total_steps=0)


def test_warmup_and_floor_are_checked_when_the_recipe_is_loaded(tmp_path) -> None:
    """``recipe check`` says what ``train`` says: before, only the build raised these."""
    from denoisekit.host.recipe import load_recipe
    from denoisekit.testing import write_recipe

    path = write_recipe(tmp_path, {"lr_schedule": {"type": "warmup-cosine", "warmup_steps": 2}})
    assert load_recipe(path).lr_schedule.config.warmup_steps == 2  # = train.steps: fine
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["train.steps=1"])
    assert "lr_schedule.warmup_steps: 2 warmup steps exceed the run's 1 steps" in str(info.value)
    with pytest.raises(
        RecipeError,
        match=r"lr_schedule.min_lr: 0.01 exceeds the optimizer's "
        r"learning rate \(0.001\)",
    ):
        load_recipe(path, ["lr_schedule.min_lr=0.01"])
    assert load_recipe(path, ["lr_schedule.min_lr=0.001"])  # = lr: fine
