"""The core training loop: a tiny real run, exact resume, data order, errors."""

from __future__ import annotations

import textwrap

import attrs
import pytest
import torch

from denoisekit import DenoisekitDeprecationWarning, hookimpl
from denoisekit.engine.batches import BatchStream
from denoisekit.engine.build import MetricsFile, build_run
from denoisekit.engine.loop import train
from denoisekit.engine.run import rng_state, set_rng_state
from denoisekit.errors import DataError, OutputError
from denoisekit.host.recipe import load_recipe

TINY = """
name = "tiny"
seed = 1
[data]
type = "digits"
[backbone]
type = "unet"
in_channels = 1
image_size = 8
channels = 16
channel_mults = [1, 2]
num_res_blocks = 1
attention_resolutions = [4]
groups = 8
dropout = 0.1
[schedule]
type = "cosine"
num_timesteps = 100
[optimizer]
type = "adamw"
lr = 1e-3
[lr_schedule]
type = "warmup-cosine"
warmup_steps = 2
[sampler]
type = "ddim"
steps = 4
[train]
steps = 6
batch_size = 16
grad_accum = 2
log_every = 2
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(textwrap.dedent(TINY))
    return load_recipe(path)


def _weights(run):
    return {k: v.clone() for k, v in run.model.state_dict().items()}


def test_tiny_run_trains_and_logs(recipe, tmp_path):
    run = build_run(recipe, out_dir=tmp_path / "run")
    before = _weights(run)
    train(run)
    assert run.step == 6
    after = _weights(run)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3  # steps 2, 4, 6
    assert (tmp_path / "run" / "recipe.toml").read_text() == recipe.to_toml()
    assert "torch" in (tmp_path / "run" / "versions.json").read_text()


def test_exact_resume_is_bit_identical(recipe, tmp_path):
    straight = build_run(recipe, out_dir=tmp_path / "a")
    train(straight)

    # Train 3 of the 6 steps (same lr schedule: built for 6), then continue in a fresh run.
    first = build_run(recipe, out_dir=tmp_path / "b")
    first = attrs.evolve(
        first, recipe=attrs.evolve(recipe, train=attrs.evolve(recipe.train, steps=3))
    )
    train(first)
    state = first.state_dict()
    torch.manual_seed(12345)  # disturb the global RNG: resume must restore it
    second = build_run(recipe, out_dir=tmp_path / "c")
    second.load_state_dict(state)
    assert second.step == 3
    train(second)
    a, b = _weights(straight), _weights(second)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(
        straight.optimizer.state_dict()["state"][0]["exp_avg"],
        second.optimizer.state_dict()["state"][0]["exp_avg"],
    )


def test_batch_stream_order_resumes_mid_epoch():
    data = torch.utils.data.TensorDataset(torch.arange(10.0), torch.arange(10))
    stream = BatchStream(data, batch_size=3, seed=0, device=torch.device("cpu"))
    seen = [next(stream)[1].tolist() for _ in range(7)]
    # drop_last: 3 batches an epoch, every epoch a permutation of disjoint batches
    epoch0 = [i for batch in seen[:3] for i in batch]
    assert len(set(epoch0)) == 9
    assert seen[:3] != seen[3:6]  # another permutation next epoch
    again = BatchStream(data, batch_size=3, seed=0, device=torch.device("cpu"))
    for _ in range(4):
        next(again)
    resumed = BatchStream(data, batch_size=3, seed=0, device=torch.device("cpu"))
    resumed.load_state_dict(again.state_dict())
    assert [next(resumed)[1].tolist() for _ in range(3)] == seen[4:7]


def test_backbone_not_matching_data_is_one_line(recipe, tmp_path):
    bad = attrs.evolve(
        recipe,
        backbone=attrs.evolve(
            recipe.backbone, config=attrs.evolve(recipe.backbone.config, in_channels=3)
        ),
    )
    with pytest.raises(DataError, match=r"set backbone\.in_channels = 1"):
        build_run(bad, out_dir=tmp_path / "run")


def test_a_failed_metrics_append_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "gone" / "metrics.jsonl"  # the folder was removed (or the disk is full)
    with pytest.raises(OutputError, match=r"gone/metrics\.jsonl: cannot append \(No such file"):
        MetricsFile(path).denoisekit_log_scalars(step=1, scalars={"loss": 1.0})


# --------------------------------------------------------------------------- the run record


def test_the_run_record_is_frozen_and_its_state_is_separate(recipe, tmp_path):
    run = build_run(recipe, out_dir=tmp_path / "run")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        run.model = torch.nn.Identity()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        run.loss = None
    with pytest.raises(TypeError):
        run.hooks["extra"] = object()  # a read-only mapping
    with pytest.warns(DenoisekitDeprecationWarning, match="run.loss_fn is deprecated"):
        assert run.loss_fn is run.loss  # 0.1's name answers until 0.3.0, with a warning
    assert run.lr_schedule is not None and run.loss.prediction_type == "eps"
    # What changes while training lives in run.state; the run reads through.
    run.state.step = 4
    assert run.step == 4
    assert run.train_model is run.state.train_model is run.model  # no compile, one process


def test_rng_state_round_trips_every_generator():
    generator = torch.Generator().manual_seed(7)
    state = rng_state(generator)
    assert set(state) >= {"generator", "torch"}
    first = (torch.rand(3, generator=generator), torch.rand(3))
    torch.manual_seed(99)  # disturb both
    generator.manual_seed(99)
    set_rng_state(generator, state)
    again = (torch.rand(3, generator=generator), torch.rand(3))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_state_dict_and_draw_state_share_the_rng_capture(recipe, tmp_path):
    run = build_run(recipe, out_dir=tmp_path / "run")
    drawn, state = run.draw_state(), run.state_dict()
    assert drawn.keys() <= state.keys() and drawn["data"] == state["data"]
    assert drawn["rng"].keys() == state["rng"].keys()
    assert torch.equal(drawn["rng"]["generator"], state["rng"]["generator"])


class _StepEndRecorder:
    def __init__(self) -> None:
        self.forward_t: list[torch.Tensor] = []
        self.calls: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    @hookimpl(tryfirst=True)
    def denoisekit_train_forward(self, t):
        self.forward_t.append(t.clone())  # None: the core's default still answers

    @hookimpl
    def denoisekit_train_step_end(self, step, loss, loss_per_sample, t):
        self.calls.append((step, loss.clone(), loss_per_sample.clone(), t.clone()))


def test_train_step_end_receives_the_per_sample_loss_and_timesteps(recipe, tmp_path):
    one_batch = attrs.evolve(recipe, train=attrs.evolve(recipe.train, grad_accum=1, steps=3))
    recorder = _StepEndRecorder()
    run = build_run(one_batch, out_dir=tmp_path / "run", extra_hooks=(recorder,))
    train(run)
    assert [step for step, *_ in recorder.calls] == [1, 2, 3]
    for (_, loss, per_sample, t), forward_t in zip(recorder.calls, recorder.forward_t, strict=True):
        assert per_sample.shape == t.shape == (16,)
        assert not per_sample.requires_grad
        assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) < 100
        assert torch.equal(run.denoiser.model_time(t), forward_t)  # the timesteps used
        assert torch.allclose(per_sample.mean(), loss)
    assert not hasattr(run, "last_loss_per_sample") and not hasattr(run, "last_t")
