"""The EMA hook: its update formula, what sampling uses, its checkpoint state."""

from __future__ import annotations

from types import SimpleNamespace

import attrs
import pytest
import torch
from torch import nn

from denoisekit import hookimpl
from denoisekit.denoiser import Denoiser
from denoisekit.diffusion import randn
from denoisekit.engine.loop import train
from denoisekit.plugins.hooks.ema import EMAConfig, EMAHook
from tests.plugins.hook_runs import params, single_thread, tiny_recipe, tiny_run


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    yield from single_thread()


def _tf_decay(decay: float, n: int) -> float:
    """TensorFlow's ExponentialMovingAverage warm-up, written out independently."""
    return min(decay, (1 + n) / (10 + n))


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("count", torch.zeros(()))


def _step(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
        model.count.fill_(value)


def test_update_every_and_start_step_follow_the_definition() -> None:
    model = _Model()
    run = SimpleNamespace(model=model)
    hook = EMAHook(EMAConfig(decay=0.5, warmup=False, update_every=2, start_step=4))
    _step(model, 0.0)
    hook.denoisekit_configure(run=run)
    expected = expected_count = 0.0
    n = 0
    for step in range(1, 9):
        value = float(step)
        _step(model, value)  # the "optimizer step"
        hook.denoisekit_train_step_end(run=run, step=step)
        if step % 2 == 0:
            expected_count = value  # buffers are copied, never averaged
            if step < 4:
                expected = value  # copied before start_step
            else:
                expected = 0.5 * expected + 0.5 * value
                n += 1
        weight = hook.model.lin.weight
        assert torch.allclose(weight, torch.full_like(weight, expected)), step
        assert hook.model.count.item() == expected_count, step
    assert hook.num_updates == n == 3
    assert not hook.model.training
    assert all(not p.requires_grad for p in hook.model.parameters())


def test_warmup_decay_values() -> None:
    hook = EMAHook(EMAConfig(decay=0.999, warmup=True))
    assert hook.decay_at(0) == pytest.approx(0.1)
    assert hook.decay_at(90) == pytest.approx(0.91)
    assert hook.decay_at(10**6) == pytest.approx(0.999)
    assert EMAHook(EMAConfig(decay=0.9, warmup=False)).decay_at(0) == 0.9


def test_bad_options_name_the_field() -> None:
    with pytest.raises(ValueError, match="decay"):
        EMAConfig(decay=1.5)
    with pytest.raises(ValueError, match="update_every"):
        EMAConfig(update_every=0)
    with pytest.raises(ValueError, match="start_step"):
        EMAConfig(start_step=-1)


class _Recorder:
    """Records the trained weights after every optimization step."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    @hookimpl
    def denoisekit_train_start(self, run) -> None:
        self.weights.append(params(run.model))

    @hookimpl
    def denoisekit_train_step_end(self, run) -> None:
        self.weights.append(params(run.model))


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ema")
    recipe = tiny_recipe(folder, steps=3, hooks={"ema": {"decay": 0.95}}, optimizer={"lr": 1e-2})
    recorder = _Recorder()
    run = tiny_run(folder, recipe, extra_hooks=(recorder,))
    train(run)
    return run, recorder


def test_ema_follows_its_formula_in_a_real_run(ema_run) -> None:
    run, recorder = ema_run
    hook = run.hooks["ema"]
    # e_0 = w_0; e_{n+1} = d_n e_n + (1 - d_n) w_{n+1}, in float64.
    expected = {k: v.double() for k, v in recorder.weights[0].items()}
    for n, weights in enumerate(recorder.weights[1:]):
        d = _tf_decay(0.95, n)
        expected = {k: d * expected[k] + (1 - d) * weights[k].double() for k in expected}
    assert hook.num_updates == 3
    ema = hook.model.state_dict()
    for name, value in expected.items():
        torch.testing.assert_close(ema[name].double(), value, rtol=1e-5, atol=1e-6)
    raw = run.model.state_dict()
    diff = max((ema[k] - raw[k]).abs().max().item() for k in raw if raw[k].is_floating_point())
    assert diff > 1e-4  # the average lags the trained weights


def test_sampling_uses_the_ema_weights(ema_run) -> None:
    run, _ = ema_run
    ema_model = run.hooks["ema"].model
    assert run.pm.hook.denoisekit_sampling_model(run=run) is ema_model
    got = run.sample(4, generator=torch.Generator().manual_seed(3))
    run.model.eval()
    for module, should_match in ((ema_model, True), (run.model, False)):
        denoiser = Denoiser(module, run.schedule, run.loss.prediction_type)
        g = torch.Generator().manual_seed(3)
        want = run.sampler.sample(denoiser, randn((4, *run.image_shape), g), generator=g)
        assert torch.equal(got, want) is should_match
    run.model.train()


def test_state_round_trips_and_missing_state_copies_weights(ema_run, tmp_path) -> None:
    run, _ = ema_run
    state = run.state_dict()
    assert set(state["hooks"]["ema"]) == {"model", "num_updates"}
    fresh = tiny_run(tmp_path, run.recipe, out="fresh")
    fresh.load_state_dict(state)
    hook = fresh.hooks["ema"]
    assert hook.num_updates == 3
    for k, v in run.hooks["ema"].model.state_dict().items():
        assert torch.equal(hook.model.state_dict()[k], v)
    # A checkpoint of a run without EMA: the average starts from its weights.
    no_ema = {**state, "hooks": {}}
    fresh.load_state_dict(no_ema)
    assert hook.num_updates == 0
    for k, v in run.model.state_dict().items():
        assert torch.equal(hook.model.state_dict()[k], v)


def test_config_is_frozen() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        EMAConfig().decay = 0.5  # type: ignore[misc]
