"""The AMP hook: the autocast dtype the forward sees, the float16 GradScaler path."""

from __future__ import annotations

import json

import pytest
import torch

from denoisekit import hookimpl
from denoisekit.engine.loop import train
from denoisekit.errors import NonFiniteLossError
from denoisekit.plugins.hooks import amp
from denoisekit.plugins.hooks.amp import AMPConfig
from tests.plugins.hook_runs import params, single_thread, tiny_recipe, tiny_run


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    yield from single_thread()


def _cpu_float16_scaler_works() -> bool:
    try:
        p = torch.nn.Parameter(torch.ones(2))
        opt = torch.optim.SGD([p], lr=0.1)
        scaler = torch.amp.GradScaler("cpu")
        with torch.autocast("cpu", dtype=torch.float16):
            loss = (p * 2).sum()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return False
    return True


needs_cpu_float16 = pytest.mark.skipif(
    not _cpu_float16_scaler_works(),
    reason="this torch has no float16 autocast or GradScaler on CPU (torch >= 2.3 has)",
)


class _Probe:
    """A forward impl (inside the AMP wrapper) recording what the backbone runs under."""

    def __init__(self, poison_steps: tuple[int, ...] = ()) -> None:
        self.seen: list[tuple[bool, torch.dtype, torch.dtype]] = []
        self.poison_steps = poison_steps

    @hookimpl(tryfirst=True)
    def denoisekit_train_forward(self, run, x_t, t, cond):
        out = run.train_model(x_t, t, cond)
        self.seen.append(
            (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), out.dtype)
        )
        if run.step + 1 in self.poison_steps:
            out = out * float("nan")
        return out


def _metrics(run) -> list[dict]:
    lines = (run.out_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize(
    ("hooks", "expected"),
    [
        ({}, (False, torch.float32)),
        ({"amp": {}}, (True, torch.bfloat16)),
        pytest.param({"amp": {"dtype": "float16"}}, (True, torch.float16), marks=needs_cpu_float16),
    ],
    ids=["no-amp", "bfloat16", "float16"],
)
def test_forward_runs_under_the_autocast_dtype(tmp_path, hooks, expected) -> None:
    probe = _Probe()
    run = tiny_run(tmp_path, tiny_recipe(tmp_path, steps=1, hooks=hooks), extra_hooks=(probe,))
    train(run)
    enabled, dtype = expected
    assert len(probe.seen) == 1
    seen_enabled, seen_dtype, out_dtype = probe.seen[0]
    assert seen_enabled is enabled
    if enabled:
        assert seen_dtype == dtype
    assert out_dtype == dtype
    # Outside the forward pass autocast is off again.
    assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "emulated-bf16"])
def test_auto_dtype_follows_the_cpus_bfloat16_support(tmp_path, monkeypatch, native) -> None:
    # The probes torch.cpu offers decide; both answers are simulated on any machine.
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: native, raising=False)
    seen = _Probe()
    hooks = {"amp": {"dtype": "auto"}}
    run = tiny_run(tmp_path, tiny_recipe(tmp_path, steps=1, hooks=hooks), extra_hooks=(seen,))
    train(run)
    enabled, _, out_dtype = seen.seen[0]
    assert run.hooks["amp"].dtype == (torch.bfloat16 if native else None)
    assert enabled is native
    assert out_dtype == (torch.bfloat16 if native else torch.float32)
    assert run.hooks["amp"].scaler is None


def test_auto_dtype_on_cuda_without_bfloat16_is_float16(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert amp.auto_dtype(torch.device("cuda")) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp.auto_dtype(torch.device("cuda")) is torch.bfloat16


def test_native_bfloat16_reads_the_cpu_probes(monkeypatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert amp.native_bfloat16(torch.device("cpu"))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not amp.native_bfloat16(torch.device("cpu"))
    assert not amp.native_bfloat16(torch.device("meta"))


@needs_cpu_float16
def test_float16_scaler_steps_and_logs(tmp_path) -> None:
    recipe = tiny_recipe(tmp_path, steps=2, hooks={"amp": {"dtype": "float16"}})
    run = tiny_run(tmp_path, recipe)
    before = params(run.model)
    train(run)
    hook = run.hooks["amp"]
    assert hook.scaler is not None
    last = _metrics(run)[-1]
    skipped = last["amp_skipped_steps"]
    assert 0 <= skipped < 2  # seeded: at least one of the two steps is applied
    assert last["amp_scale"] == 65536.0 * 0.5**skipped  # no growth within 2000 steps
    after = run.model.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in before.items())
    state = run.state_dict()["hooks"]["amp"]
    assert state["skipped_steps"] == skipped
    assert state["scaler"]["scale"] == last["amp_scale"]


@needs_cpu_float16
def test_overflowing_steps_are_skipped_counted_and_checkpointed(tmp_path) -> None:
    # A scale of 2^100 overflows float16 gradients: every step is skipped and halves it.
    hooks = {"amp": {"dtype": "float16", "init_scale": 2.0**100}}
    recipe = tiny_recipe(tmp_path, steps=2, hooks=hooks, train={"log_every": 1})
    run = tiny_run(tmp_path, recipe)
    before = params(run.model)
    train(run)
    rows = _metrics(run)
    assert [r["amp_skipped_steps"] for r in rows] == [1, 2]
    assert [r["amp_scale"] for r in rows] == [2.0**99, 2.0**98]
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, before[k]), k  # no update was applied
    # The scaler's state survives a checkpoint round trip.
    fresh = tiny_run(tmp_path, recipe, out="fresh")
    fresh.load_state_dict(run.state_dict())
    assert fresh.hooks["amp"].scaler.get_scale() == 2.0**98
    assert int(fresh.hooks["amp"]._skipped) == 2


@needs_cpu_float16
@pytest.mark.parametrize("max_skipped", [20, 0])
def test_nan_guard_leaves_scaler_skipped_steps_alone(tmp_path, max_skipped) -> None:
    hooks = {
        "amp": {"dtype": "float16"},
        "nan-guard": {"amp_max_skipped": max_skipped},
    }
    recipe = tiny_recipe(tmp_path, steps=2, hooks=hooks, train={"log_every": 1})
    run = tiny_run(tmp_path, recipe, extra_hooks=(_Probe(poison_steps=(1,)),))
    if max_skipped == 0:
        with pytest.raises(NonFiniteLossError, match="step 1: loss is nan"):
            train(run)
        return
    train(run)  # step 1's NaN loss was skipped by the scaler, step 2 is clean
    rows = _metrics(run)
    assert rows[0]["amp_skipped_steps"] >= 1
    assert rows[0]["amp_scale"] == 32768.0 * 0.5 ** (rows[0]["amp_skipped_steps"] - 1)


def test_bad_dtype_names_the_field() -> None:
    with pytest.raises(ValueError, match="dtype"):
        AMPConfig(dtype="float32")
    with pytest.raises(ValueError, match="init_scale"):
        AMPConfig(init_scale=0.0)
